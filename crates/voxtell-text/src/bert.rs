//! A sentence-transformers BERT encoder (all-MiniLM-L6-v2 and its kin) through
//! candle-transformers' `BertModel`.
//!
//! The recipe is the folder's sentence-transformers configuration, as
//! `SentenceTransformer(folder).encode(prompts)` runs it:
//!
//! - `modules.json`: a Transformer module (`path` `""`, or a subfolder), a Pooling module, and
//!   optionally a Normalize module, in that order; any other module (Dense, …) is refused. A
//!   folder without `modules.json` is a plain Hugging Face BERT, which sentence-transformers
//!   runs as Transformer + mean pooling, without normalisation; so does this crate.
//! - the Pooling module's `config.json`: mean pooling (`"pooling_mode": "mean"`, or the older
//!   `pooling_mode_mean_tokens: true` with every other `pooling_mode_*` flag false); other
//!   modes are refused. The mean is weighted by the attention mask (padding excluded).
//! - Normalize: `v / max(‖v‖₂, 1e-12)`.
//! - the longest input: `max_seq_length` of `sentence_bert_config.json`, else `model_max_length`
//!   of `tokenizer_config.json` (newer sentence-transformers write it there), else 256; never
//!   more than `max_position_embeddings`. Longer prompts are truncated on the right, `[SEP]`
//!   kept (the tokenizer's own truncation and padding entries are replaced).
//!
//! As for every encoder of this crate, prompts are lowercased first (see the `encoder` module);
//! there is no instruction. Token type ids are all 0; batches are right-padded with the pad id
//! under an attention mask, at most [`crate::MAX_BATCH`] prompts, sorted by length within
//! a call, identical token sequences embedded once.
//!
//! Weights: `model.safetensors` (or shards with an index) under the names `BertModel` writes,
//! with or without a `bert.` or `model.` prefix, LayerNorm as `weight`/`bias` or the older
//! `gamma`/`beta`. A folder with only `pytorch_model.bin` is refused with a hint.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::batching::{EmbedMode, embed_sequences};
use crate::error::{Result, TextError};
use crate::folder::{Module, model_type, modules, read_json, transformer_dir, weight_files};
use crate::prompt::normalize;
use crate::spec::{EncoderKind, EncoderSpec, Pooling, hub_id};

/// `max_seq_length` when the folder names none (all-MiniLM-L6-v2's).
pub const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// The sentence-transformers modules of a folder, as far as this crate runs them.
#[derive(Debug, Clone)]
struct BertFolder {
    transformer_dir: PathBuf,
    config: Config,
    pooling: Pooling,
    normalize: bool,
    max_tokens: usize,
}

/// Read a BERT `config.json`, filling the fields candle's configuration requires that some
/// writers omit (with `BertConfig`'s defaults) and mapping the tanh GELU names.
pub fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let err = |reason: String| TextError::Model { path: path.clone(), reason };
    let mut json = read_json(&path)?;
    match json.get("model_type").and_then(|v| v.as_str()) {
        Some("bert") => {}
        other => return Err(err(format!("model_type is {other:?}, expected \"bert\""))),
    }
    for (key, default) in [
        ("hidden_act", serde_json::json!("gelu")),
        ("hidden_dropout_prob", serde_json::json!(0.1)),
        ("max_position_embeddings", serde_json::json!(512)),
        ("type_vocab_size", serde_json::json!(2)),
        ("initializer_range", serde_json::json!(0.02)),
        ("layer_norm_eps", serde_json::json!(1e-12)),
        ("pad_token_id", serde_json::json!(0)),
        ("classifier_dropout", serde_json::Value::Null),
    ] {
        if json.get(key).is_none_or(|v| v.is_null() && key != "classifier_dropout") {
            json[key] = default;
        }
    }
    let act = json["hidden_act"].as_str().unwrap_or_default().to_string();
    json["hidden_act"] = match act.as_str() {
        "gelu" => serde_json::json!("gelu"),
        "gelu_new" | "gelu_pytorch_tanh" => serde_json::json!("geluapproximate"),
        "relu" => serde_json::json!("relu"),
        other => return Err(err(format!("hidden_act {other:?} is not supported (gelu, gelu_new, relu)"))),
    };
    match json.get("position_embedding_type").and_then(|v| v.as_str()) {
        None | Some("absolute") => {
            json["position_embedding_type"] = serde_json::json!("absolute");
        }
        Some(other) => {
            return Err(err(format!("position_embedding_type {other:?} is not supported (absolute only)")));
        }
    }
    let cfg: Config =
        serde_json::from_value(json).map_err(|e| err(format!("not a BERT configuration: {e}")))?;
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(err(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    Ok(cfg)
}

/// Pooling from a Pooling module's `config.json`: mean only, clearly refused otherwise.
fn read_pooling(path: &Path, hidden: usize) -> Result<Pooling> {
    let json = read_json(path)?;
    let err = |reason: String| TextError::Model { path: path.to_path_buf(), reason };
    for key in ["word_embedding_dimension", "embedding_dimension"] {
        if let Some(d) = json.get(key).and_then(|v| v.as_u64())
            && d as usize != hidden
        {
            return Err(err(format!("{key} {d} differs from the transformer's hidden_size {hidden}")));
        }
    }
    let modes: Vec<String> = match json.get("pooling_mode").and_then(|v| v.as_str()) {
        Some(mode) => vec![mode.to_string()],
        None => json
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
                    .map(|(k, _)| k.trim_start_matches("pooling_mode_").to_string())
                    .collect()
            })
            .unwrap_or_default(),
    };
    match modes.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["mean"] | ["mean_tokens"] => Ok(Pooling::Mean),
        [] => Err(err("no pooling mode is set".into())),
        _ => Err(err(format!(
            "pooling {} is not supported: only mean pooling (all-MiniLM-L6-v2's) is implemented",
            modes.join(" + ")
        ))),
    }
}

/// The longest input, special tokens included.
fn read_max_tokens(dir: &Path, cfg: &Config) -> Result<usize> {
    let from = |file: &str, key: &str| -> Result<Option<usize>> {
        let path = dir.join(file);
        if !path.exists() {
            return Ok(None);
        }
        // Transformers writes a huge sentinel (1e30) when a tokenizer has no limit.
        Ok(read_json(&path)?
            .get(key)
            .and_then(|v| v.as_f64())
            .filter(|n| (2.0..1e9).contains(n))
            .map(|n| n as usize))
    };
    let n = match from("sentence_bert_config.json", "max_seq_length")? {
        Some(n) => n,
        None => from("tokenizer_config.json", "model_max_length")?.unwrap_or(DEFAULT_MAX_SEQ_LENGTH),
    };
    Ok(n.min(cfg.max_position_embeddings))
}

/// Read a sentence-transformers (or plain Hugging Face) BERT folder's configuration.
fn read_folder(dir: &Path) -> Result<BertFolder> {
    let list = modules(dir)?;
    let transformer_dir = transformer_dir(dir)?;
    let config = read_config(&transformer_dir)?;
    let (pooling, normalize) = match list {
        None => (Pooling::Mean, false),
        Some(list) => {
            let path = dir.join("modules.json");
            let err = |reason: String| TextError::Model { path: path.clone(), reason };
            let classes: Vec<&str> = list.iter().map(Module::class).collect();
            match classes[..] {
                ["Transformer", "Pooling"] | ["Transformer", "Pooling", "Normalize"] => {}
                _ => {
                    return Err(err(format!(
                        "modules {} are not supported: Transformer, Pooling and an optional Normalize only",
                        list.iter().map(|m| m.kind.as_str()).collect::<Vec<_>>().join(" → ")
                    )));
                }
            }
            let pooling = read_pooling(&dir.join(&list[1].path).join("config.json"), config.hidden_size)?;
            (pooling, list.len() == 3)
        }
    };
    let max_tokens = read_max_tokens(&transformer_dir, &config)?;
    Ok(BertFolder { transformer_dir, config, pooling, normalize, max_tokens })
}

/// What a sentence-transformers (or plain Hugging Face) BERT folder computes, from its
/// configuration files (no weights or tokenizer read).
pub(crate) fn spec(dir: &Path) -> Result<EncoderSpec> {
    let f = read_folder(dir)?;
    Ok(EncoderSpec {
        folder: dir.to_path_buf(),
        weights_dir: f.transformer_dir,
        kind: EncoderKind::Bert,
        id: hub_id(dir),
        dim: f.config.hidden_size,
        pooling: f.pooling,
        normalize: f.normalize,
        instruction: None,
        lowercase: true,
        max_tokens: f.max_tokens,
    })
}

/// A loaded sentence-transformers BERT encoder.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pad_id: u32,
    heads: usize,
    device: Device,
    spec: EncoderSpec,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder").field("spec", &self.spec).finish()
    }
}

impl BertEmbedder {
    /// Load a sentence-transformers BERT folder (see the module documentation for the files).
    ///
    /// `dtype` F32 or F64 is the compute precision; F16 and BF16 run in F32: candle-transformers
    /// 0.11.1's `BertModel` builds its attention mask from `f32::MIN` cast to the model's dtype,
    /// which overflows to `-inf` in half precision and turns every score into NaN (`0·-inf`).
    /// MiniLM has 22 M parameters, f32 costs nothing worth saving.
    pub fn load(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        let dir = dir.as_ref();
        let config = transformer_dir(dir)?.join("config.json");
        let kind = EncoderKind::from_model_type(&model_type(&config)?, &config)?;
        if kind != EncoderKind::Bert {
            return Err(TextError::Model {
                path: config,
                reason: format!("model_type is {:?}, expected \"bert\"", kind.model_type()),
            });
        }
        let spec = spec(dir)?;
        let wdir = spec.weights_dir.clone();
        let config = read_config(&wdir)?;
        let tok_path = wdir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(TextError::Model {
                path: tok_path,
                reason: "tokenizer.json is missing (a vocab.txt alone is not read)".into(),
            });
        }
        let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| TextError::Model {
            path: tok_path.clone(),
            reason: format!("unreadable tokenizer: {e}"),
        })?;
        // sentence-transformers: `truncation="longest_first", max_length=max_seq_length`.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| TextError::Model { path: tok_path.clone(), reason: format!("truncation: {e}") })?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| tokenizer.token_to_id("[PAD]"))
            .unwrap_or(config.pad_token_id as u32);
        // Padding is ours (per batch, on the right); the file's fixed padding must not apply.
        tokenizer.with_padding(None);

        let dtype = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let files = weight_files(&wdir)?;
        // SAFETY: the weight files are mapped read-only and must not be modified while the model
        // is loading; every tensor is copied (converted) out of the mapping.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
        let prefix = ["", "bert.", "model."]
            .into_iter()
            .find(|p| vb.contains_tensor(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| TextError::Model {
                path: wdir.clone(),
                reason: "no embeddings.word_embeddings.weight (bare, or with a bert. or model. prefix) in the weights"
                    .into(),
            })?;
        let gamma = vb.contains_tensor(&format!("{prefix}embeddings.LayerNorm.gamma"));
        let vb = vb.rename_f(move |name| {
            let name = format!("{prefix}{name}");
            if gamma {
                if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
                    return format!("{stem}LayerNorm.gamma");
                }
                if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
                    return format!("{stem}LayerNorm.beta");
                }
            }
            name
        });
        let model = BertModel::load(vb, &config)?;
        Ok(BertEmbedder {
            model,
            tokenizer,
            pad_id,
            heads: config.num_attention_heads,
            device: device.clone(),
            spec,
        })
    }

    /// What the encoder computes.
    pub fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    /// Vector width (the hidden size).
    pub fn dim(&self) -> usize {
        self.spec.dim
    }

    /// Token ids of a prompt as the model sees them: lowercased, `[CLS] … [SEP]`, truncated to
    /// `max_seq_length`.
    pub fn token_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(normalize(prompt), true)
            .map_err(|e| TextError::Tokenize { prompt: prompt.to_string(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embed prompts, one vector per prompt, in order, in right-padded batches.
    pub fn embed(&self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.embed_with(prompts, EmbedMode::Batched)
    }

    /// [`BertEmbedder::embed`] with a choice of how the model runs.
    pub fn embed_with(&self, prompts: &[&str], mode: EmbedMode) -> Result<Vec<Vec<f32>>> {
        let ids = prompts.iter().map(|p| self.token_ids(p)).collect::<Result<Vec<_>>>()?;
        self.embed_token_ids(&ids, mode)
    }

    /// Embed token sequences as they are (no lowercasing, no tokenizer, no truncation: at most
    /// `max_position_embeddings` tokens), pooled and normalised as the folder says.
    pub fn embed_token_ids(&self, ids: &[Vec<u32>], mode: EmbedMode) -> Result<Vec<Vec<f32>>> {
        embed_sequences(ids, mode, |rows, len| rows * self.heads * len * len, |rows| self.run(rows))
    }

    /// One right-padded batch through the model: a pooled (and normalised) vector per row.
    fn run(&self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let b = rows.len();
        let l = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(self.pad_id, l - r.len()));
            mask.extend(std::iter::repeat_n(1f32, r.len()));
            mask.extend(std::iter::repeat_n(0f32, l - r.len()));
        }
        let ids = Tensor::from_vec(ids, (b, l), &self.device)?;
        let mask = Tensor::from_vec(mask, (b, l), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?.to_dtype(DType::F32)?;
        let pooled = match self.spec.pooling {
            // sum(h · mask) / max(sum(mask), 1e-9), as sentence-transformers' Pooling.
            Pooling::Mean => {
                let m = mask.unsqueeze(2)?;
                let sum = hidden.broadcast_mul(&m)?.sum(1)?;
                let count = m.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                sum.broadcast_div(&count)?
            }
            Pooling::LastToken => {
                return Err(TextError::Model {
                    path: self.spec.folder.clone(),
                    reason: "last-token pooling is not implemented for BERT".into(),
                });
            }
        };
        let out = if self.spec.normalize {
            let norm = pooled.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12f32, f32::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        Ok(out.to_vec2::<f32>()?)
    }
}
