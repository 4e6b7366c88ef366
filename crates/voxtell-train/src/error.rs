//! The error type of `voxtell-train`.

use std::path::PathBuf;

/// What can go wrong preparing data for, running or saving a training step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// Building or loading the network failed.
    #[error(transparent)]
    Fusion(#[from] voxtell_fusion::FusionError),
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Settings, shapes or inputs that do not fit together.
    #[error("{0}")]
    Config(String),
    /// A loss or gradient norm that is NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// An image or label map could not be read, or a file could not be written (the error
    /// names the file).
    #[error(transparent)]
    Image(#[from] voxtell_io::IoError),
    /// A dataset folder, its `dataset.json` or one of its cases is unusable.
    #[error("{path}: {reason}")]
    Dataset {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A vocabulary entry is malformed or does not fit its dataset.
    #[error("{path}: vocabulary key {key:?}: {reason}")]
    Vocabulary {
        /// The vocabulary file.
        path: PathBuf,
        /// The key at fault (`dataset/label`).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// Prompts of the vocabulary that the embedding bank (config field `bank`) holds no vector
    /// for.
    #[error("{path}: {} prompt(s) of the vocabulary have no vector in the bank (config field `bank`): {prompts:?}", prompts.len())]
    MissingVectors {
        /// The bank.
        path: PathBuf,
        /// The prompts without a vector, sorted.
        prompts: Vec<String>,
    },
    /// The preprocessed-data cache is unusable.
    #[error("{path}: cache: {reason}")]
    Cache {
        /// The cache file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The background data loader failed (a worker panicked or stopped).
    #[error("data loader: {0}")]
    Loader(String),
}

impl TrainError {
    /// A [`TrainError::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        TrainError::File { path: path.into(), reason: reason.to_string() }
    }
}

/// Result type of this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
