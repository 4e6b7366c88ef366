//! Qwen3-Embedding prompt vectors: the official recipe (lowercase, instruction wrap, the
//! folder's `tokenizer.json` with its post-processor — which appends `<|endoftext|>` —
//! truncation to 8192 tokens, last-token pooling of the final-norm hidden states, f32, no
//! normalisation).
//!
//! [`QwenEmbedder::embed`] runs the prompts as the official code does: left-padded batches of at
//! most [`MAX_BATCH`] prompts under an attention mask, through this crate's own Qwen3 forward
//! (`backbone`). Within one call the prompts are sorted by length, so that similar lengths share
//! a batch (less padding), and identical token sequences are embedded once; the vectors come
//! back in the input order. [`EmbedMode::OnePerPrompt`] runs each prompt alone, unpadded. Both
//! use the same weights, loaded once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;
use tokenizers::{Tokenizer, TruncationParams};

use crate::backbone::Backbone;
use crate::encoder::EncoderSpec;
use crate::error::{Result, TextError};
use crate::prompt::{INSTRUCTION, normalize, wrap};

/// Most prompts in one padded batch (the official chunk size).
pub const MAX_BATCH: usize = 32;

/// Longest token sequence, special tokens included (the official `max_length`); longer prompts
/// are truncated on the right, keeping the appended `<|endoftext|>`.
pub const MAX_TOKENS: usize = 8192;

/// A cap on the f32 elements of one layer's attention scores (batch × heads × L²): batches of
/// long prompts are made smaller than [`MAX_BATCH`] to stay under it (a batch holds at least
/// one prompt whatever its length).
const SCORE_BUDGET: usize = 1 << 27;

/// How [`QwenEmbedder::embed_with`] runs the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EmbedMode {
    /// Left-padded batches of at most [`MAX_BATCH`] prompts under an attention mask, as the
    /// official code does (prompts sorted by length within the call, duplicates run once).
    #[default]
    Batched,
    /// Every prompt alone, without padding.
    OnePerPrompt,
}

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
/// `model.safetensors.index.json` (every one must exist); `pytorch_model.bin` alone is refused
/// with a hint.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let err = |reason: String| TextError::Model { path: index.clone(), reason };
    let text = std::fs::read_to_string(&index).map_err(|_| {
        let pickle = ["pytorch_model.bin", "pytorch_model.bin.index.json"].iter().any(|f| dir.join(f).exists());
        TextError::Model {
            path: dir.to_path_buf(),
            reason: if pickle {
                "only PyTorch pickle weights (pytorch_model.bin), which are not read: convert them to model.safetensors (transformers: AutoModel.from_pretrained(dir).save_pretrained(dir))".into()
            } else {
                "no model.safetensors and no model.safetensors.index.json".into()
            },
        }
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
        let spec = EncoderSpec::qwen(dir, &config);
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

/// Run non-empty token sequences in padded batches: distinct sequences only, shortest first
/// (stable: ties keep the input order), split by [`batches`]; `run` embeds one batch (a vector
/// per row, in order). The vectors come back in the input order, duplicates sharing theirs.
/// Embed token sequences one per forward or in batches ([`run_batched`]); `run` is the model's
/// forward on rows of equal meaning (BERT and Qwen share this). Empty sequences are errors.
pub(crate) fn embed_sequences(
    ids: &[Vec<u32>],
    mode: EmbedMode,
    score_elements: impl Fn(usize, usize) -> usize,
    run: impl Fn(&[&[u32]]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    if let Some(i) = ids.iter().position(Vec::is_empty) {
        return Err(TextError::Tokenize {
            prompt: format!("token sequence #{i}"),
            reason: "no tokens".into(),
        });
    }
    match mode {
        EmbedMode::OnePerPrompt => {
            ids.iter().map(|row| run(&[row.as_slice()]).map(|mut v| v.remove(0))).collect()
        }
        EmbedMode::Batched => run_batched(ids, score_elements, run),
    }
}

pub(crate) fn run_batched(
    ids: &[Vec<u32>],
    score_elements: impl Fn(usize, usize) -> usize,
    mut run: impl FnMut(&[&[u32]]) -> Result<Vec<Vec<f32>>>,
) -> Result<Vec<Vec<f32>>> {
    let mut slot_of: HashMap<&[u32], usize> = HashMap::new();
    let mut distinct: Vec<&[u32]> = Vec::new();
    let slots: Vec<usize> = ids
        .iter()
        .map(|row| {
            *slot_of.entry(row.as_slice()).or_insert_with(|| {
                distinct.push(row.as_slice());
                distinct.len() - 1
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&i| distinct[i].len());
    let lens: Vec<usize> = order.iter().map(|&i| distinct[i].len()).collect();
    let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); distinct.len()];
    for range in batches(&lens, score_elements) {
        let chunk = &order[range];
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| distinct[i]).collect();
        for (&i, v) in chunk.iter().zip(run(&rows)?) {
            vectors[i] = v;
        }
    }
    Ok(slots.into_iter().map(|s| vectors[s].clone()).collect())
}

/// Split ascending sequence lengths into consecutive batches of at most [`MAX_BATCH`] whose
/// attention scores (`score_elements(rows, padded length)`) stay within [`SCORE_BUDGET`]; a
/// batch holds at least one sequence.
fn batches(
    ascending_lens: &[usize],
    score_elements: impl Fn(usize, usize) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < ascending_lens.len() {
        // Lengths ascend, so the newest row sets the padded length.
        let mut end = start + 1;
        while end < ascending_lens.len()
            && end - start < MAX_BATCH
            && score_elements(end + 1 - start, ascending_lens[end]) <= SCORE_BUDGET
        {
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_32_and_respect_the_score_budget() {
        let scores = |rows: usize, len: usize| rows * 32 * len * len;
        assert!(batches(&[], scores).is_empty());
        let lens = vec![30; 70];
        assert_eq!(batches(&lens, scores), vec![0..32, 32..64, 64..70]);
        // 32 heads: 32 rows of 362 tokens fit in 2^27 score elements; of 363 tokens, 31 do.
        let lens = [vec![100; 20], vec![363; 20]].concat();
        let got = batches(&lens, scores);
        assert_eq!(got, vec![0..31, 31..40]);
        assert!(got.iter().all(|r| scores(r.len(), lens[r.end - 1]) <= SCORE_BUDGET));
        // A sequence too long for the budget still gets a batch of its own.
        assert_eq!(batches(&[10, 9000, 9000], scores), vec![0..1, 1..2, 2..3]);
    }
}
