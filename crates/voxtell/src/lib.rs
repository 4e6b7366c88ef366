//! VoxTell in Rust: segment any structure in a 3-D CT, MR or PET scan from a free-text prompt.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use voxtell::demo::{Demo, demo_dir};
//! use voxtell::io::WriteOptions;
//!
//! let scan = voxtell::io::read("phantom.nii.gz")?; // a NIfTI file or a DICOM series folder
//! let mut demo = Demo::load(demo_dir())?; // the embedded demo model and its prompt bank
//! let masks = demo.predictor.predict(&scan, &["left kidney"])?;
//! masks.write_mask(0, "left_kidney.nii.gz", WriteOptions { overwrite: true })?;
//! # Ok(())
//! # }
//! ```
//!
//! The demo model knows synthetic phantoms only (`voxtell phantom` writes one; the
//! `quickstart` example regenerates a held-out one). For real scans, build the
//! [`infer::Predictor`] from the published model folder instead:
//! `Predictor::from_dir(model_dir, vectors, PredictOptions::default(), &Device::Cpu)` with
//! [`text::PromptVectors`] over a text encoder or an embedding bank (see the `predict` and
//! `batch` examples of this crate).
//!
//! This facade re-exports the layered crates of the workspace so that a user's crate depends on
//! one crate only:
//!
//! - [`io`]: NIfTI/DICOM reading, RAS reorientation as the official reader, NIfTI writing;
//! - [`text`]: prompt embeddings (Qwen3-Embedding, BERT sentence encoders) and embedding banks;
//! - [`vision`]: 3-D convolution engine and the ResEncL encoder;
//! - [`fusion`]: the VoxTell network and checkpoint loading;
//! - [`infer`]: the prediction pipeline, from one scan to batches of cases;
//! - [`phantom`]: synthetic torso-CT phantoms with organ masks (datasets without patient data);
//! - `train` (with the `train` feature): text-prompted training and fine-tuning;
//! - [`demo`]: the embedded demo model (trained on phantoms) and its scoring.
//!
//! The allocator a program runs with is the binary's choice, not this library's: the `voxtell`
//! command installs the one of the `voxtell-alloc` crate.

/// The tensor library the network runs on (re-exported so users need no separate dependency).
pub use candle_core as candle;
/// candle's neural-network helpers (`VarBuilder`, …).
pub use candle_nn;
pub use voxtell_fusion as fusion;
pub use voxtell_infer as infer;
pub use voxtell_io as io;
pub use voxtell_phantom as phantom;
pub use voxtell_text as text;
#[cfg(feature = "train")]
pub use voxtell_train as train;
pub use voxtell_vision as vision;

pub mod demo;
