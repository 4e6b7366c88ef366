//! The error type of `voxtell-phantom`.

use std::path::PathBuf;

/// What can go wrong checking phantom options or writing a phantom dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PhantomError {
    /// An option of [`crate::PhantomOptions`] (named in the message) is out of its range.
    #[error("phantom options: {0}")]
    Options(String),
    /// The dataset name cannot be a folder name.
    #[error("phantom dataset name {0:?} is not a folder name")]
    Name(String),
    /// A file or folder could not be created or written.
    #[error("{path}: {reason}")]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A NIfTI file or `dataset.json` could not be written (the error names the file).
    #[error(transparent)]
    Io(#[from] voxtell_io::IoError),
}

impl PhantomError {
    /// A [`PhantomError::File`] for `path`.
    pub fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        PhantomError::File { path: path.into(), reason: reason.to_string() }
    }
}

/// Result type of this crate.
pub type Result<T, E = PhantomError> = std::result::Result<T, E>;
