//! The VoxTell inference pipeline.
//!
//! This crate owns the order of steps of one prediction, exactly as the official predictor runs
//! them: crop to the non-zero box, z-score, pad, sliding window with Gaussian blending and f16
//! accumulation, thresholding, un-cropping, and the outputs in the scan's geometry.

pub mod components;
pub mod error;
pub mod naming;
pub mod predict;
pub mod preprocess;
pub mod preview;
pub mod sliding;
pub mod stats;
pub mod window;

pub use error::{InferError, Result};
pub use predict::{Masks, Plan, PredictOptions, Predictor, segment};
pub use sliding::{Accumulate, Logits};
pub use voxtell_vision::ops::ConvPrecision;
