//! Qwen3-Embedding prompt vectors with candle-transformers' Qwen3 model: the official recipe
//! (lowercase, instruction wrap, the folder's `tokenizer.json` with its post-processor — which
//! appends `<|endoftext|>` — last-token pooling of the final-norm hidden states, f32, no
//! normalisation).
//!
//! Each prompt runs alone through a fresh copy of the model (the Qwen3 model of
//! candle-transformers takes no padding mask and keeps a KV cache per call); with left padding
//! and rotary positions this equals the official padded batch up to rounding.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;
use tokenizers::Tokenizer;

use crate::error::{Result, TextError};
use crate::prompt::{INSTRUCTION, normalize, wrap};

/// A loaded Qwen3-Embedding text encoder.
pub struct QwenEmbedder {
    model: qwen3::Model,
    tokenizer: Tokenizer,
    device: Device,
    dim: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for QwenEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenEmbedder").field("dir", &self.dir).field("dim", &self.dim).finish()
    }
}

/// Read a Qwen3 `config.json`, accepting `rope_theta` at the top level (published checkpoints)
/// or inside `rope_parameters` (transformers 5.x).
pub fn read_config(dir: &Path) -> Result<qwen3::Config> {
    let path = dir.join("config.json");
    let err = |reason: String| TextError::Model { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    match json.get("model_type").and_then(|v| v.as_str()) {
        Some("qwen3") => {}
        other => {
            return Err(err(format!(
                "model_type is {other:?}, expected \"qwen3\" (a Qwen3-Embedding model)"
            )));
        }
    }
    if json.get("rope_theta").is_none()
        && let Some(theta) = json.get("rope_parameters").and_then(|r| r.get("rope_theta")).cloned()
    {
        json["rope_theta"] = theta;
    }
    // Fields candle's config requires that some writers omit.
    for (key, default) in [
        ("sliding_window", serde_json::Value::Null),
        ("use_sliding_window", serde_json::Value::Bool(false)),
        ("attention_bias", serde_json::Value::Bool(false)),
        ("tie_word_embeddings", serde_json::Value::Bool(false)),
        ("hidden_act", serde_json::Value::String("silu".into())),
    ] {
        if json.get(key).is_none() {
            json[key] = default;
        }
    }
    if json.get("max_window_layers").is_none() {
        json["max_window_layers"] = json.get("num_hidden_layers").cloned().unwrap_or(serde_json::Value::Null);
    }
    if json.get("head_dim").is_none()
        && let (Some(h), Some(n)) = (json["hidden_size"].as_u64(), json["num_attention_heads"].as_u64())
        && n > 0
    {
        json["head_dim"] = serde_json::Value::from(h / n);
    }
    serde_json::from_value(json).map_err(|e| err(format!("not a Qwen3 configuration: {e}")))
}

/// The weight files of a model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json` (every one must exist).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let err = |reason: String| TextError::Model { path: index.clone(), reason };
    let text = std::fs::read_to_string(&index).map_err(|_| TextError::Model {
        path: dir.to_path_buf(),
        reason: "no model.safetensors and no model.safetensors.index.json".into(),
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let map =
        json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| err("no weight_map".into()))?;
    let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(String::from)).collect();
    files.sort();
    files.dedup();
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        return Err(TextError::Model {
            path: missing.clone(),
            reason: "shard listed in the index is missing".into(),
        });
    }
    Ok(files)
}

impl QwenEmbedder {
    /// Load a Qwen3-Embedding folder in the Hugging Face layout (`config.json`,
    /// `tokenizer.json`, one or several `*.safetensors`), weights with or without a `model.`
    /// prefix, converted tensor by tensor to `dtype` from memory-mapped shards.
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_config(dir)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(TextError::Model { path: tok_path, reason: "tokenizer.json is missing".into() });
        }
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| TextError::Model {
            path: tok_path.clone(),
            reason: format!("unreadable tokenizer: {e}"),
        })?;
        let files = weight_files(dir)?;
        // SAFETY: the weight files are mapped read-only and must not be modified while the model
        // is loading; every tensor is copied (converted) out of the mapping.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
        let vb = if vb.contains_tensor("model.embed_tokens.weight") {
            vb
        } else if vb.contains_tensor("embed_tokens.weight") {
            vb.rename_f(|name| name.strip_prefix("model.").unwrap_or(name).to_string())
        } else {
            return Err(TextError::Model {
                path: dir.to_path_buf(),
                reason: "no embed_tokens.weight (with or without a model. prefix) in the weights".into(),
            });
        };
        let model = qwen3::Model::new(&config, vb)?;
        Ok(QwenEmbedder {
            model,
            tokenizer,
            device: device.clone(),
            dim: config.hidden_size,
            dir: dir.to_path_buf(),
        })
    }

    /// Vector width (the model's hidden size).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Token ids of a prompt after the official processing (lowercase, instruction, the
    /// tokenizer's post-processor).
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let text = wrap(INSTRUCTION, &normalize(prompt));
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TextError::Tokenize { prompt: prompt.to_string(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embed prompts, one vector (f32, width [`QwenEmbedder::dim`]) per prompt, in order.
    pub fn embed(&self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        prompts
            .iter()
            .map(|p| {
                let ids = self.token_ids(p)?;
                if ids.is_empty() {
                    return Err(TextError::Tokenize { prompt: p.to_string(), reason: "no tokens".into() });
                }
                let input = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
                let mut model = self.model.clone();
                let hidden = model.forward(&input, 0)?;
                Ok(hidden.i((0, ids.len() - 1))?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            })
            .collect()
    }
}
