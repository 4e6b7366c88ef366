//! The VoxTell inference pipeline.
//!
//! This crate will own the order of steps of one prediction, exactly as the official predictor
//! runs them: crop to the non-zero box, z-score, pad, sliding window with Gaussian blending and
//! f16 accumulation, thresholding, un-cropping, and writing masks back in the scan's geometry.
//! So far: [`preprocess`] (crop to the non-zero box, z-score, centred padding, un-crop) and
//! [`window`] (the sliding-window geometry and the Gaussian importance map).

pub mod preprocess;
pub mod window;
