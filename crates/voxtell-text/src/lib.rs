//! The text side of VoxTell: prompts to vectors.
//!
//! - [`prompt`]: the official recipe — Unicode lowercase, then the retrieval instruction.
//! - [`qwen`]: a Qwen3-Embedding folder (Hugging Face layout) and its own `tokenizer.json`,
//!   through this crate's Qwen3 forward in left-padded, masked batches of up to 32 prompts as the
//!   official code runs them; last-token pooling, f32, no normalisation.
//! - [`bank`]: `.npz` embedding banks as the official code reads and writes them, so the
//!   4-billion-parameter encoder is only needed for prompts the bank lacks.
//! - [`source`]: bank first, encoder only for what is missing (loaded once, then dropped), and
//!   where the text model is found (flag, `$VOXTELL_TEXT_MODEL`, the Hugging Face cache).
//!
//! It knows nothing about images or the segmentation network.

mod backbone;
pub mod bank;
mod error;
pub mod prompt;
pub mod qwen;
pub mod source;

pub use bank::EmbeddingBank;
pub use error::{Result, TextError};
pub use qwen::{EmbedMode, QwenEmbedder};
pub use source::{DEFAULT_TEXT_MODEL, PromptVectors, resolve_text_model};
