//! The text side of VoxTell: prompts to vectors.
//!
//! - [`prompt`]: the official recipe — Unicode lowercase, then the retrieval instruction.
//! - [`encoder`]: which encoder a folder holds ([`TextEncoder`], chosen by `config.json`'s
//!   `model_type`), its recipe ([`EncoderSpec`]) and the check against a segmentation model's
//!   `voxtell.json` ([`EncoderSpec::matches`]).
//! - [`qwen`]: a Qwen3-Embedding folder (Hugging Face layout) and its own `tokenizer.json`,
//!   through this crate's Qwen3 forward in left-padded, masked batches of up to 32 prompts as the
//!   official code runs them; last-token pooling, f32, no normalisation.
//! - [`bert`]: a sentence-transformers BERT folder (all-MiniLM-L6-v2) through candle-transformers'
//!   `BertModel`: lowercase, no instruction, mean pooling under the attention mask, L2
//!   normalisation, truncation to `max_seq_length`, as the folder's `modules.json` says.
//! - [`bank`]: `.npz` embedding banks as the official code reads and writes them, so the
//!   4-billion-parameter encoder is only needed for prompts the bank lacks.
//! - [`source`]: bank first, encoder only for what is missing (loaded once, then dropped), and
//!   where the text model is found (flag, `$VOXTELL_TEXT_MODEL`, the Hugging Face cache).
//!
//! It knows nothing about images or the segmentation network.

mod backbone;
pub mod bank;
pub mod bert;
pub mod encoder;
mod error;
pub mod prompt;
pub mod qwen;
pub mod source;

pub use bank::EmbeddingBank;
pub use bert::BertEmbedder;
pub use encoder::{EncoderKind, EncoderSpec, Pooling, TextEncoder};
pub use error::{Result, TextError};
pub use qwen::{EmbedMode, QwenEmbedder};
pub use source::{DEFAULT_TEXT_MODEL, PromptVectors, TextModelOrigin, locate_text_model, resolve_text_model};
