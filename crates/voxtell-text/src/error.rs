//! The error type of `voxtell-text`.

use std::path::PathBuf;

/// What can go wrong turning prompts into vectors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TextError {
    /// A tensor operation or weight load failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A text-model folder is incomplete or of another kind.
    #[error("{path}: {reason}")]
    Model {
        /// The folder or file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A text model computes other vectors than a segmentation model (or bank) expects.
    #[error(
        "{path}: the text model is {found}, but the prompt vectors must come from {expected} (differs in: {differs})"
    )]
    Mismatch {
        /// The text-model folder.
        path: PathBuf,
        /// What the folder computes.
        found: String,
        /// What was expected.
        expected: String,
        /// The fields that differ.
        differs: String,
    },
    /// The tokenizer failed on a prompt.
    #[error("tokenizing {prompt:?}: {reason}")]
    Tokenize {
        /// The prompt.
        prompt: String,
        /// The tokenizer's message.
        reason: String,
    },
    /// An embedding bank is unreadable or inconsistent.
    #[error("embedding bank {path}: {reason}")]
    Bank {
        /// The bank file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T, E = TextError> = std::result::Result<T, E>;
