//! The crate's one error type.

/// Everything that can go wrong building, encoding or decoding a VXA2 array.
///
/// Every message names what was wrong and the numbers involved, so a server can hand it back to
/// the client as is (a 400 answer, or a 413 for [`WireError::TooLarge`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The body does not start with `VXA2`.
    #[error("not a VXA2 array payload: bad magic bytes {found:02x?} (expected \"VXA2\")")]
    BadMagic {
        /// The first bytes of the body (up to 4).
        found: Vec<u8>,
    },
    /// The body ends inside the header or inside a chunk frame.
    #[error("VXA2 payload truncated in the {what} at byte {at}: {needed} bytes needed, {available} left")]
    Truncated {
        /// Which field was being read.
        what: String,
        /// Offset of the field in the body.
        at: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the body from `at`.
        available: usize,
    },
    /// The dtype string is not one of the numpy types this crate knows.
    #[error(
        "unknown dtype string {0:?} (expected a numpy dtype.str such as \"|u1\", \"<u2\", \"<i2\", \"<f4\", \"|b1\")"
    )]
    UnknownDtype(String),
    /// The shape's element count overflows.
    #[error("shape {shape:?} of {dtype} is too large to address ({what} overflows)")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<u64>,
        /// The numpy dtype string.
        dtype: String,
        /// What overflowed.
        what: &'static str,
    },
    /// The header's total raw length disagrees with its shape and dtype.
    #[error(
        "shape {shape:?} of {dtype} holds {expected} bytes but the VXA2 header declares a total of {declared} bytes"
    )]
    ShapeMismatch {
        /// The shape.
        shape: Vec<usize>,
        /// The numpy dtype string.
        dtype: String,
        /// prod(shape) × itemsize.
        expected: u64,
        /// The header's total raw length.
        declared: u64,
    },
    /// [`crate::WireArray::new`] got a byte buffer of the wrong length.
    #[error("shape {shape:?} of {dtype} needs {expected} bytes, got {got}")]
    ByteLength {
        /// The shape.
        shape: Vec<usize>,
        /// The numpy dtype string.
        dtype: String,
        /// prod(shape) × itemsize, in words ("12", or "more than 2^64").
        expected: String,
        /// The buffer's length.
        got: usize,
    },
    /// The decoded size would exceed the caller's limit (checked before allocating).
    #[error("VXA2 payload too large: {what} declares {declared} bytes > limit {limit}")]
    TooLarge {
        /// What declared the size (the header's total, or chunk K's blosc2 header).
        what: String,
        /// The declared size in bytes.
        declared: u64,
        /// The caller's limit in bytes.
        limit: u64,
    },
    /// One blosc2 chunk could not be decoded.
    #[error("VXA2 chunk {index} (at byte {offset}) is corrupt: {reason}")]
    ChunkCorrupt {
        /// Chunk number, from 0.
        index: usize,
        /// Offset of the chunk's frame (its raw-length field) in the body.
        offset: usize,
        /// What is wrong, with blosc2's own error where it gave one.
        reason: String,
    },
    /// The chunks hold a different number of bytes than the header's total.
    #[error("corrupt VXA2 payload: the header declares {declared} raw bytes, the chunks hold {got}")]
    TotalMismatch {
        /// The header's total raw length.
        declared: u64,
        /// The sum of the chunks' decompressed lengths.
        got: u64,
    },
    /// Encoding was asked for something the format cannot hold, or blosc2 failed.
    #[error("cannot encode VXA2 payload: {0}")]
    Encode(String),
    /// [`crate::WireArray::to_labels`] on a floating-point array.
    #[error("a {dtype} array cannot be read as labels (labels must be an integer or bool dtype)")]
    NotLabels {
        /// The numpy dtype string.
        dtype: String,
    },
    /// [`crate::WireArray::to_labels`] met a value that is no u32 label.
    #[error("{dtype} array has value {value} at flat index {index}, which is not a label in 0..=4294967295")]
    LabelOutOfRange {
        /// The numpy dtype string.
        dtype: String,
        /// Flat (C-order) element index.
        index: usize,
        /// The value, widened.
        value: i128,
    },
}
