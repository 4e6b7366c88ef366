//! The error type of `voxtell-fusion`.

use std::path::PathBuf;

/// What can go wrong loading or running a VoxTell model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FusionError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The vision part (encoder plan, convolutions) failed.
    #[error(transparent)]
    Vision(#[from] voxtell_vision::VisionError),
    /// A model file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A weight the architecture needs is not in the checkpoint.
    #[error("{path}: missing weight {key}")]
    MissingKey {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A weight has another shape than the architecture needs.
    #[error("{path}: weight {key} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        key: String,
        /// The shape the architecture needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The plans, the checkpoint or the inputs describe something this crate does not build.
    #[error("{0}")]
    Config(String),
    /// Writing a file failed (the error names it).
    #[error(transparent)]
    Io(#[from] voxtell_io::IoError),
    /// No model folder was given and the published one is not at hand.
    #[error(
        "no model folder given (option `model`) and ${env} is unset, and the published weights ({repo}, folder {folder}) are not in the Hugging Face cache; {reason}",
        env = crate::published::VOXTELL_MODEL,
        repo = crate::published::PUBLISHED_REPO,
        folder = crate::published::PUBLISHED_FOLDER
    )]
    NoModel {
        /// Why the published weights could not be had (download failed, or disabled).
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = FusionError> = std::result::Result<T, E>;
