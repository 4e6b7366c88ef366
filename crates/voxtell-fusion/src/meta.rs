//! `voxtell.json`: what a model folder written by `voxtell convert` or by training says about
//! itself beyond `plans.json` — the memory stage, the attention heads, and the text encoder its
//! prompt vectors must come from. The published folder has none; its defaults are those of
//! VoxTell v1.1 (Qwen3-Embedding-4B).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::folder::ModelDir;

/// The text encoder a model was trained with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextEncoderSpec {
    /// Model id (e.g. `Qwen/Qwen3-Embedding-4B`).
    pub id: String,
    /// Embedding width.
    pub dim: usize,
    /// Pooling: `last_token` or `mean`.
    pub pooling: String,
    /// Whether vectors are L2-normalised.
    pub normalize: bool,
    /// Instruction the prompt is wrapped with, if any.
    pub instruction: Option<String>,
}

impl Default for TextEncoderSpec {
    fn default() -> Self {
        TextEncoderSpec {
            id: "Qwen/Qwen3-Embedding-4B".into(),
            dim: 2560,
            pooling: "last_token".into(),
            normalize: false,
            instruction: Some(
                "Given an anatomical term query, retrieve the precise anatomical entity and location it represents"
                    .into(),
            ),
        }
    }
}

impl TextEncoderSpec {
    /// The encoder to record for a model whose weights take `dim`-wide vectors when nothing
    /// says which one it was trained with: VoxTell's default when it has that width, else an
    /// `unknown` encoder of that width (last-token pooling, no normalisation, no instruction).
    pub fn default_for_width(dim: usize) -> Self {
        let default = TextEncoderSpec::default();
        if default.dim == dim {
            default
        } else {
            TextEncoderSpec {
                id: "unknown".into(),
                dim,
                pooling: "last_token".into(),
                normalize: false,
                instruction: None,
            }
        }
    }
}

/// The contents of `voxtell.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMeta {
    /// Encoder stage whose output is the prompt decoder's memory.
    pub decoder_layer: usize,
    /// Attention heads of the prompt decoder.
    pub attention_heads: usize,
    /// The text encoder the model expects.
    pub text_encoder: TextEncoderSpec,
}

impl Default for ModelMeta {
    fn default() -> Self {
        ModelMeta { decoder_layer: 4, attention_heads: 8, text_encoder: TextEncoderSpec::default() }
    }
}

/// Convert a model folder (`plans.json` + `fold_0/checkpoint_final.pth`, or an already
/// converted one) into one that loads without the pickle reader: `plans.json`,
/// `model.safetensors` (canonical keys, no aliases) and `voxtell.json` (the folder's own, else
/// VoxTell's defaults with the text width the weights take). The source is opened and checked
/// as [`ModelDir::open`] does before anything is written; an output folder that holds any of the
/// three files is refused unless `overwrite`.
pub fn convert(model_dir: &Path, out_dir: &Path, overwrite: bool) -> Result<()> {
    let source = ModelDir::open(model_dir)?;
    let meta = match source.meta() {
        Some(m) => m.clone(),
        None => {
            let config = source.config();
            ModelMeta {
                decoder_layer: config.decoder_layer,
                attention_heads: config.attention_heads,
                text_encoder: TextEncoderSpec::default_for_width(config.text_dim),
            }
        }
    };
    ModelDir::write(out_dir, source.plans(), source.checkpoint(), &meta, overwrite)
}
