//! The error type of `voxtell-vision`.

/// What can go wrong building or running the vision modules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VisionError {
    /// A tensor operation failed (shape mismatch, missing or misshapen weight, dtype).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The plan (`arch_kwargs`) asks for something this crate does not build.
    #[error("unsupported or inconsistent plan: {0}")]
    Plan(String),
}

/// Result type of this crate.
pub type Result<T, E = VisionError> = std::result::Result<T, E>;
