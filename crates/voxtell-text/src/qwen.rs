//! Qwen3-Embedding prompt vectors: the official recipe (lowercase, instruction wrap, the
//! folder's `tokenizer.json` with its post-processor — which appends `<|endoftext|>` —
//! truncation to 8192 tokens, last-token pooling of the final-norm hidden states, f32, no
//! normalisation).
//!
//! [`QwenEmbedder::embed`] runs the prompts as the official code does: left-padded batches of at
//! most [`crate::MAX_BATCH`] prompts under an attention mask, through this crate's own Qwen3 forward
//! (`backbone`). Within one call the prompts are sorted by length, so that similar lengths share
//! a batch (less padding), and identical token sequences are embedded once; the vectors come
//! back in the input order. [`EmbedMode::OnePerPrompt`] runs each prompt alone, unpadded. Both
//! use the same weights, loaded once.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;
use tokenizers::{Tokenizer, TruncationParams};

use crate::backbone::Backbone;
use crate::batching::{EmbedMode, embed_sequences};
use crate::error::{Result, TextError};
use crate::folder::{read_json, weight_files};
use crate::prompt::{INSTRUCTION, normalize, wrap};
use crate::spec::{EncoderKind, EncoderSpec, Pooling};

/// Longest token sequence, special tokens included (the official `max_length`); longer prompts
/// are truncated on the right, keeping the appended `<|endoftext|>`.
pub const MAX_TOKENS: usize = 8192;

/// A loaded Qwen3-Embedding text encoder.
pub struct QwenEmbedder {
    model: Backbone,
    tokenizer: Tokenizer,
    pad_id: u32,
    spec: EncoderSpec,
}

impl std::fmt::Debug for QwenEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QwenEmbedder").field("spec", &self.spec).finish()
    }
}

/// Read a Qwen3 `config.json`, accepting `rope_theta` at the top level (published checkpoints)
/// or inside `rope_parameters` (transformers 5.x).
pub fn read_config(dir: &Path) -> Result<qwen3::Config> {
    let path = dir.join("config.json");
    let err = |reason: String| TextError::Model { path: path.clone(), reason };
    let mut json = read_json(&path)?;
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

/// What a Qwen3-Embedding folder computes, from its `config.json` (no weights read).
pub(crate) fn spec(dir: &Path) -> Result<EncoderSpec> {
    Ok(recipe(dir, &read_config(dir)?))
}

/// The Qwen3-Embedding recipe for a folder with this configuration.
fn recipe(dir: &Path, cfg: &qwen3::Config) -> EncoderSpec {
    EncoderSpec {
        folder: dir.to_path_buf(),
        weights_dir: dir.to_path_buf(),
        kind: EncoderKind::Qwen3,
        id: crate::spec::hub_id(dir),
        dim: cfg.hidden_size,
        pooling: Pooling::LastToken,
        normalize: false,
        instruction: Some(INSTRUCTION.to_string()),
        lowercase: true,
        max_tokens: MAX_TOKENS,
    }
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
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| TextError::Model {
            path: tok_path.clone(),
            reason: format!("unreadable tokenizer: {e}"),
        })?;
        // The official call: `truncation=True, max_length=8192` (right side, longest first).
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| TextError::Model { path: tok_path.clone(), reason: format!("truncation: {e}") })?;
        // The official pad token; any id would do, padded positions are masked.
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("<|endoftext|>"))
            .unwrap_or(0);
        // Padding is ours (per batch, on the left); a file's own padding must not apply.
        tokenizer.with_padding(None);
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
        let model = Backbone::new(&config, vb.pp("model"))?;
        let spec = recipe(dir, &config);
        Ok(QwenEmbedder { model, tokenizer, pad_id, spec })
    }

    /// What the encoder computes (the VoxTell recipe).
    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    /// Vector width (the model's hidden size).
    pub fn dim(&self) -> usize {
        self.spec.dim
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

    /// Embed prompts, one vector (f32, width [`QwenEmbedder::dim`]) per prompt, in order, in
    /// left-padded batches ([`EmbedMode::Batched`]).
    pub fn embed(&self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with(prompts, EmbedMode::Batched)
    }

    /// [`QwenEmbedder::embed`] with a choice of how the backbone runs.
    pub fn embed_with(&self, prompts: &[&str], mode: EmbedMode) -> Result<Vec<Vec<f32>>> {
        let ids = prompts
            .iter()
            .map(|p| {
                let ids = self.token_ids(p)?;
                if ids.is_empty() {
                    return Err(TextError::Tokenize { prompt: p.to_string(), reason: "no tokens".into() });
                }
                Ok(ids)
            })
            .collect::<Result<Vec<_>>>()?;
        self.embed_token_ids(&ids, mode)
    }

    /// Embed token sequences as they are (no instruction, no tokenizer): the last-token vector
    /// of each, in order.
    pub fn embed_token_ids(&self, ids: &[Vec<u32>], mode: EmbedMode) -> Result<Vec<Vec<f32>>> {
        embed_sequences(ids, mode, |rows, len| self.model.score_elements(rows, len), |rows| self.run(rows))
    }

    /// One padded batch through the backbone: a vector per row.
    fn run(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        Ok(self.model.last_token_states(rows, self.pad_id)?.to_vec2::<f32>()?)
    }
}
