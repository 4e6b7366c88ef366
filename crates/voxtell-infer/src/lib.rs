//! The VoxTell inference pipeline.
//!
//! This crate owns the order of steps of one prediction, exactly as the official predictor runs
//! them: crop to the non-zero box, z-score, pad, sliding window with Gaussian blending and f16
//! accumulation, thresholding, un-cropping, and the outputs in the scan's geometry — and batch
//! prediction over many cases with the outputs a caller chooses ([`batch`], [`writers`]), which
//! every front end calls.

pub mod batch;
pub mod components;
pub mod error;
pub mod job;
pub mod masks;
pub mod naming;
mod options;
pub mod plan;
pub mod predict;
pub mod preprocess;
pub mod preview;
pub mod seg;
pub mod shard;
pub mod sliding;
pub mod stats;
pub mod window;
pub mod writers;

pub use batch::{
    Batch, BatchOptions, CancelToken, Case, CaseRecord, CaseStatus, Event, Input, Job, jobs_from_inputs,
    jobs_from_json,
};
pub use error::{InferError, Result};
pub use masks::Masks;
pub use options::PredictOptions;
pub use plan::{Plan, human_bytes};
pub use predict::{Predictor, segment, segment_prepared};
pub use seg::{DicomSegFile, code_for, prompt_segment, seg_options};
pub use shard::{Part, PartArg};
pub use sliding::{Accumulate, Logits};
pub use voxtell_vision::ops::ConvPrecision;
pub use writers::{
    CombinedMap, MaskFiles, OutputWriter, PredictedCase, PreviewImage, ProbabilityMaps, StatisticsFile,
};
