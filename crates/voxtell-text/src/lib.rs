//! The text side of VoxTell: prompts to vectors.
//!
//! - [`prompt`]: the official recipe — Unicode lowercase, then the retrieval instruction.
//! - [`spec`]: what an encoder computes ([`EncoderSpec`]: kind, width, [`Pooling`],
//!   normalisation, instruction) and the check against a segmentation model's `voxtell.json`
//!   ([`EncoderSpec::matches`]).
//! - [`encoder`]: which encoder a folder holds ([`TextEncoder`], chosen by `config.json`'s
//!   `model_type`; [`EncoderSpec::of_folder`] describes it without loading weights).
//! - [`qwen`]: a Qwen3-Embedding folder (Hugging Face layout) and its own `tokenizer.json`,
//!   through this crate's Qwen3 forward in left-padded, masked batches of up to 32 prompts as the
//!   official code runs them; last-token pooling, f32, no normalisation.
//! - [`bert`]: a sentence-transformers BERT folder (all-MiniLM-L6-v2) through candle-transformers'
//!   `BertModel`: lowercase, no instruction, mean pooling under the attention mask, L2
//!   normalisation, truncation to `max_seq_length`, as the folder's `modules.json` says.
//! - [`bank`]: `.npz` embedding banks as the official code reads and writes them, so the
//!   4-billion-parameter encoder is only needed for prompts the bank lacks.
//! - [`vectors`]: [`PromptVectors`], bank first, encoder only for what is missing (loaded once,
//!   then dropped), and where the text model is found (a path the caller gives,
//!   `$VOXTELL_TEXT_MODEL`, the Hugging Face cache).
//!
//! Private to the crate: `folder` (the files of a model folder both encoders read:
//! `config.json`'s `model_type`, `modules.json`, the safetensors weights), `batching` (padded
//! batches of at most [`MAX_BATCH`] prompts, or one forward per prompt, [`EmbedMode`]) and
//! `backbone` (the Qwen3 forward). The modules depend one way: `vectors` → `encoder` →
//! `qwen`/`bert` → `spec`, `batching`, `folder`, `prompt`.
//!
//! It knows nothing about images or the segmentation network.

mod backbone;
pub mod bank;
mod batching;
pub mod bert;
pub mod encoder;
mod error;
mod folder;
pub mod prompt;
pub mod qwen;
pub mod spec;
pub mod vectors;

pub use bank::EmbeddingBank;
pub use batching::{EmbedMode, MAX_BATCH};
pub use bert::BertEmbedder;
pub use encoder::TextEncoder;
pub use error::{Result, TextError};
pub use qwen::QwenEmbedder;
pub use spec::{EncoderKind, EncoderSpec, Pooling};
pub use vectors::{
    DEFAULT_TEXT_MODEL, PromptVectors, TextModelOrigin, available_memory, locate_text_model,
    resolve_text_model,
};
