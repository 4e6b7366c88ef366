//! Which text encoder a folder holds, how it turns prompts into vectors, and whether that is
//! the encoder a segmentation model was trained with.
//!
//! Two kinds are supported, told apart by `model_type` in the folder's `config.json`:
//!
//! | | `"qwen3"` ([`QwenEmbedder`]) | `"bert"` ([`BertEmbedder`]) |
//! |---|---|---|
//! | example | Qwen/Qwen3-Embedding-4B (VoxTell v1.1) | sentence-transformers/all-MiniLM-L6-v2 |
//! | lowercase first | yes | yes |
//! | instruction | VoxTell's retrieval instruction | none |
//! | pooling | last token (left-padded batches) | mean over the attention mask (right-padded) |
//! | L2 normalisation | no | when `modules.json` has a Normalize module |
//! | longest input | 8192 tokens | `max_seq_length` (256 for MiniLM) |
//!
//! The Qwen recipe is VoxTell's own code and is fixed (a sentence-transformers configuration a
//! Qwen folder may also ship is ignored); the BERT recipe is the folder's sentence-transformers
//! configuration ([`crate::bert`]).
//!
//! Prompts are lowercased for both (Unicode lowercase, as the official code before every bank
//! lookup): a bank is keyed by the lowercased prompt, so its vector must be a function of the
//! lowercased prompt. For an uncased BERT tokenizer, which lowercases anyway, this changes
//! nothing but a word-final capital sigma (Σ → ς, where the tokenizer's per-character lowercase
//! gives σ).
//!
//! A bank is only vectors: [`EncoderSpec::of_folder`] describes a folder without loading its
//! weights, and [`EncoderSpec::matches`] compares it with what a segmentation model names in its
//! `voxtell.json` (plain fields: this crate does not depend on the model crate).

use std::path::Path;

use candle_core::{DType, Device};

use crate::batching::EmbedMode;
use crate::bert::BertEmbedder;
use crate::error::Result;
use crate::folder::{model_type, transformer_dir};
use crate::qwen::QwenEmbedder;
use crate::spec::{EncoderKind, EncoderSpec};

impl EncoderSpec {
    /// Describe a text-model folder from its configuration files, without loading weights or
    /// tokenizer. Errors name the file at fault: a missing or unreadable `config.json`, an
    /// unsupported `model_type`, sentence-transformers modules or pooling this crate does not
    /// implement.
    pub fn of_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = transformer_dir(dir)?.join("config.json");
        match EncoderKind::from_model_type(&model_type(&config)?, &config)? {
            EncoderKind::Qwen3 => crate::qwen::spec(dir),
            EncoderKind::Bert => crate::bert::spec(dir),
        }
    }
}

/// A loaded text encoder of either kind.
#[derive(Debug)]
pub enum TextEncoder {
    /// Qwen3-Embedding.
    Qwen(QwenEmbedder),
    /// A sentence-transformers BERT.
    Bert(BertEmbedder),
}

impl TextEncoder {
    /// Load the folder's encoder, chosen by `model_type` in its `config.json`. `dtype` is the
    /// compute precision (a BERT encoder runs in f32 when asked for f16/bf16, see
    /// [`BertEmbedder::load`]).
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let spec = EncoderSpec::of_folder(dir)?;
        Ok(match spec.kind {
            EncoderKind::Qwen3 => TextEncoder::Qwen(QwenEmbedder::load(dir, dtype, device)?),
            EncoderKind::Bert => TextEncoder::Bert(BertEmbedder::load(dir, dtype, device)?),
        })
    }

    /// What the encoder computes.
    pub fn spec(&self) -> &EncoderSpec {
        match self {
            TextEncoder::Qwen(e) => e.spec(),
            TextEncoder::Bert(e) => e.spec(),
        }
    }

    /// Vector width.
    pub fn dim(&self) -> usize {
        self.spec().dim
    }

    /// Token ids of a prompt after the encoder's recipe (lowercase, instruction if any,
    /// truncation, special tokens).
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        match self {
            TextEncoder::Qwen(e) => e.token_ids(prompt),
            TextEncoder::Bert(e) => e.token_ids(prompt),
        }
    }

    /// One vector per prompt, in order, in padded batches.
    pub fn embed(&self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with(prompts, EmbedMode::Batched)
    }

    /// [`TextEncoder::embed`] with a choice of how the network runs.
    pub fn embed_with(&self, prompts: &[&str], mode: EmbedMode) -> Result<Vec<Vec<f32>>> {
        match self {
            TextEncoder::Qwen(e) => e.embed_with(prompts, mode),
            TextEncoder::Bert(e) => e.embed_with(prompts, mode),
        }
    }
}
