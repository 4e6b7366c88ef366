//! `voxtell.json`: what a model folder written by `voxtell convert` or by training says about
//! itself beyond `plans.json` — the memory stage, the attention heads, and the text encoder its
//! prompt vectors must come from. The published folder has none; its defaults are those of
//! VoxTell v1.1 (Qwen3-Embedding-4B).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FusionError, Result};

/// File name of the metadata inside a model folder.
pub const META_FILE: &str = "voxtell.json";

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

impl ModelMeta {
    /// Read `voxtell.json` from a model folder, `None` when it has none (the published folder).
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(META_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| FusionError::File { path: path.clone(), reason: e.to_string() })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| FusionError::File { path, reason: format!("invalid metadata: {e}") })
    }

    /// Write `voxtell.json` into a folder.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(META_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| FusionError::Config(e.to_string()))?;
        std::fs::write(&path, text + "\n").map_err(|e| FusionError::File { path, reason: e.to_string() })
    }
}

/// Convert a model folder (`plans.json` + `fold_0/checkpoint_final.pth`) into one that loads
/// without the pickle reader: `plans.json`, `model.safetensors` (canonical keys, no aliases) and
/// `voxtell.json`. An existing output folder's files are replaced only with `overwrite`.
pub fn convert(model_dir: &Path, out_dir: &Path, overwrite: bool) -> Result<()> {
    let file_err = |path: &Path, e: String| FusionError::File { path: path.to_path_buf(), reason: e };
    let plans = model_dir.join("plans.json");
    let plans_text = std::fs::read_to_string(&plans).map_err(|e| file_err(&plans, e.to_string()))?;
    // Check that the folder really is a loadable model before writing anything.
    let ckpt = crate::Checkpoint::open(model_dir.join("fold_0").join("checkpoint_final.pth"))?;
    let plans_json: serde_json::Value =
        serde_json::from_str(&plans_text).map_err(|e| file_err(&plans, format!("not valid JSON: {e}")))?;
    let config = crate::VoxTellConfig::infer(&plans_json, &ckpt)?;
    let meta = match ModelMeta::from_dir(model_dir)? {
        Some(m) => m,
        // The published defaults, with the text width the weights actually take.
        None => {
            let mut m = ModelMeta::default();
            if m.text_encoder.dim != config.text_dim {
                m.text_encoder = TextEncoderSpec {
                    id: "unknown".into(),
                    dim: config.text_dim,
                    pooling: "last_token".into(),
                    normalize: false,
                    instruction: None,
                };
            }
            m
        }
    };
    let weights = out_dir.join("model.safetensors");
    if !overwrite && weights.exists() {
        return Err(file_err(&weights, "exists (overwriting was not requested)".into()));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| file_err(out_dir, e.to_string()))?;
    ckpt.save_safetensors(&weights)?;
    let out_plans = out_dir.join("plans.json");
    std::fs::write(&out_plans, plans_text).map_err(|e| file_err(&out_plans, e.to_string()))?;
    meta.write(out_dir)
}
