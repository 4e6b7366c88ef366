//! The error type of `voxtell-infer`.

use std::path::PathBuf;

/// Everything that can go wrong while predicting masks or writing the outputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// Reading an image or writing an output failed.
    #[error(transparent)]
    Io(#[from] voxtell_io::IoError),
    /// Loading or running the network failed.
    #[error(transparent)]
    Model(#[from] voxtell_fusion::FusionError),
    /// Prompt vectors could not be found or computed.
    #[error(transparent)]
    Text(#[from] voxtell_text::TextError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The caller's progress callback asked to stop.
    #[error("prediction cancelled")]
    Cancelled,
    /// An argument or input does not fit (named in the message).
    #[error("{0}")]
    Invalid(String),
    /// An option of the prediction does not fit (the option is named by its field, e.g.
    /// `step_size`; a front end maps it to its own spelling with [`InferError::option`]).
    #[error("option `{option}`: {reason}")]
    Option {
        /// The option's name (a field of `PredictOptions` or `BatchOptions`).
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The accumulated logits hold ±inf (the official predictor aborts in the same case).
    #[error("the blended logits of prompt {prompt:?} hold ±inf; accumulate in f32 (option `accumulate`)")]
    Overflow {
        /// The prompt whose logits overflowed.
        prompt: String,
    },
    /// Not enough memory for even the smallest prompt group.
    #[error("not enough memory: {0}")]
    Memory(String),
    /// An output file could not be written.
    #[error("{path}: {reason}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl InferError {
    /// The option a user can change to get past this error, named as the field of
    /// `PredictOptions` or `BatchOptions` it is (`max_memory`, `accumulate`, `step_size`, …), so
    /// that a front end can point at its own flag or setting.
    pub fn option(&self) -> Option<&'static str> {
        match self {
            InferError::Option { option, .. } => Some(option),
            InferError::Overflow { .. } => Some("accumulate"),
            InferError::Memory(_) => Some("max_memory"),
            _ => None,
        }
    }
}

/// `Result` with [`InferError`].
pub type Result<T> = std::result::Result<T, InferError>;
