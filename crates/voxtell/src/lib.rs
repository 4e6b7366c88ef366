//! VoxTell in Rust: segment any structure in a 3-D CT, MR or PET scan from a free-text prompt.
//!
//! This facade re-exports the layered crates of the workspace so that a user's crate depends on
//! one crate only:
//!
//! - [`io`]: NIfTI/DICOM reading, RAS reorientation as the official reader, NIfTI writing;
//! - [`text`]: prompt embeddings (Qwen3-Embedding) and embedding banks;
//! - [`vision`]: 3-D convolution engine and the ResEncL encoder;
//! - [`fusion`]: the VoxTell network and checkpoint loading;
//! - [`infer`]: the prediction pipeline;
//! - [`train`]: text-prompted training and fine-tuning;
//! - [`demo`]: the embedded demo model (trained on synthetic phantoms) and its scoring.
//!
//! ```no_run
//! # fn main() -> Result<(), voxtell::io::IoError> {
//! let scan = voxtell::io::read("ct.nii.gz")?;
//! println!("{}", scan.summary());
//! # Ok(())
//! # }
//! ```

/// The tensor library the network runs on (re-exported so users need no separate dependency).
pub use candle_core as candle;
/// candle's neural-network helpers (`VarBuilder`, …).
pub use candle_nn;
pub use voxtell_fusion as fusion;
pub use voxtell_infer as infer;
pub use voxtell_io as io;
pub use voxtell_text as text;
pub use voxtell_train as train;
pub use voxtell_vision as vision;

pub mod demo;
