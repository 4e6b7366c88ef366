//! Where prompt vectors come from: an embedding bank first, the text encoder (either kind, see
//! [`crate::encoder`]) only for prompts the bank lacks (loaded once, dropped as soon as they are
//! embedded); new vectors are cached in the bank as f16 for the rest of the run, as the official
//! predictor does.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::bank::EmbeddingBank;
use crate::encoder::TextEncoder;
use crate::error::{Result, TextError};
use crate::spec::{EncoderKind, EncoderSpec};

/// The Hugging Face model id of VoxTell v1.1's text encoder.
pub const DEFAULT_TEXT_MODEL: &str = "Qwen/Qwen3-Embedding-4B";

/// Where a text-model folder was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextModelOrigin {
    /// Given by the caller (a path or an option).
    Given,
    /// From `$VOXTELL_TEXT_MODEL`.
    Environment,
    /// From the local Hugging Face cache ([`DEFAULT_TEXT_MODEL`]), found without being asked
    /// for: a caller may pass over it when it does not fit the model.
    Cache,
}

impl TextModelOrigin {
    /// Whether the user named this folder (by a path or the environment), so that a folder
    /// that does not fit the model is an error rather than passed over.
    pub fn is_explicit(self) -> bool {
        self != TextModelOrigin::Cache
    }
}

/// Find a text-model folder: the given path, else `$VOXTELL_TEXT_MODEL` (when non-empty), else
/// the local Hugging Face cache for [`DEFAULT_TEXT_MODEL`] (read-only: nothing is downloaded).
pub fn resolve_text_model(explicit: Option<&Path>) -> Option<PathBuf> {
    locate_text_model(explicit).map(|(dir, _)| dir)
}

/// As [`resolve_text_model`], with where the folder was found.
pub fn locate_text_model(explicit: Option<&Path>) -> Option<(PathBuf, TextModelOrigin)> {
    if let Some(p) = explicit {
        return Some((p.to_path_buf(), TextModelOrigin::Given));
    }
    if let Some(p) = std::env::var_os("VOXTELL_TEXT_MODEL").filter(|v| !v.is_empty()) {
        return Some((PathBuf::from(p), TextModelOrigin::Environment));
    }
    let cache = hf_hub::Cache::from_env();
    let repo = cache.model(DEFAULT_TEXT_MODEL.to_string());
    let dir = repo.get("config.json").and_then(|p| p.parent().map(Path::to_path_buf))?;
    Some((dir, TextModelOrigin::Cache))
}

/// Bytes the weights of a model folder need in `dtype`, from the sizes of its safetensors files
/// (stored as bf16/f16 in the published checkpoints).
pub fn weights_bytes(dir: &Path, dtype: DType) -> u64 {
    let stored: u64 = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    // Half-precision on disk; f32 doubles it.
    if dtype == DType::F32 { stored * 2 } else { stored }
}

/// Memory the system can still give (`MemAvailable` of `/proc/meminfo`), when known: the guard
/// before an encoder is loaded reads it, and so does the prediction's memory plan
/// (`voxtell_infer::plan::available_memory` is this function).
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Prompt vectors from a bank and, for what it lacks, a text encoder.
#[derive(Debug)]
pub struct PromptVectors {
    bank: EmbeddingBank,
    model_dir: Option<PathBuf>,
    origin: TextModelOrigin,
    dtype: DType,
    device: Device,
}

impl PromptVectors {
    /// A source with `bank` (possibly empty) and an optional text-model folder, which counts as
    /// given by the caller ([`TextModelOrigin::Given`]).
    pub fn new(bank: EmbeddingBank, model_dir: Option<PathBuf>, dtype: DType, device: &Device) -> Self {
        PromptVectors { bank, model_dir, origin: TextModelOrigin::Given, dtype, device: device.clone() }
    }

    /// A source with `bank` and the text model [`locate_text_model`] finds for `explicit`,
    /// remembering where it was found.
    pub fn located(bank: EmbeddingBank, explicit: Option<&Path>, dtype: DType, device: &Device) -> Self {
        let (model_dir, origin) = match locate_text_model(explicit) {
            Some((dir, origin)) => (Some(dir), origin),
            None => (None, TextModelOrigin::Given),
        };
        PromptVectors { bank, model_dir, origin, dtype, device: device.clone() }
    }

    /// The text-model folder, if any (describe it with [`EncoderSpec::of_folder`]).
    pub fn model_dir(&self) -> Option<&Path> {
        self.model_dir.as_deref()
    }

    /// Where the text-model folder was found.
    pub fn model_origin(&self) -> TextModelOrigin {
        self.origin
    }

    /// Stop using the text-model folder (e.g. one found in the cache that does not fit the
    /// segmentation model): prompts the bank lacks are then errors.
    pub fn forget_model(&mut self) {
        self.model_dir = None;
    }

    /// The bank, including vectors embedded so far.
    pub fn bank(&self) -> &EmbeddingBank {
        &self.bank
    }

    /// Vectors for `prompts` in order: from the bank where present; the rest embedded by the
    /// text model (an error naming the prompts when there is none). As the official predictor,
    /// a freshly embedded prompt is returned in f32 and cached in the bank as f16, so only a
    /// later request for it gets the rounded vector.
    pub fn vectors(&mut self, prompts: &[&str]) -> Result<Vec<Vec<f32>>> {
        // Missing prompts in first-seen order, once per lowercased text (the bank's key).
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<&str> = prompts
            .iter()
            .copied()
            .filter(|p| self.bank.get(p).is_none() && seen.insert(p.to_lowercase()))
            .collect();
        let mut fresh: std::collections::HashMap<String, Vec<f32>> = std::collections::HashMap::new();
        if !missing.is_empty() {
            let Some(dir) = self.model_dir.clone() else {
                return Err(TextError::Model {
                    path: PathBuf::from(DEFAULT_TEXT_MODEL),
                    reason: format!(
                        "no text model (option `text_model`, $VOXTELL_TEXT_MODEL or the Hugging Face cache) to embed {} prompt(s) missing from the bank: {:?}",
                        missing.len(),
                        missing
                    ),
                });
            };
            // The folder's kind and recipe first (configuration files only): clear errors
            // before any weight is read.
            let spec = EncoderSpec::of_folder(&dir)?;
            if self.bank.dim() != 0 && !self.bank.is_empty() && spec.dim != self.bank.dim() {
                return Err(TextError::Model {
                    path: dir,
                    reason: format!(
                        "{spec} embeds {}-wide vectors but the bank holds {}-wide ones (a bank of another encoder)",
                        spec.dim,
                        self.bank.dim()
                    ),
                });
            }
            // A BERT encoder runs in f32 whatever was asked (see `BertEmbedder::load`).
            let dtype = if spec.kind == EncoderKind::Bert { DType::F32 } else { self.dtype };
            let need = weights_bytes(&spec.weights_dir, dtype);
            if self.device.is_cpu()
                && let Some(avail) = available_memory()
                && need > avail
            {
                return Err(TextError::Model {
                    path: dir,
                    reason: format!(
                        "the text model needs about {:.1} GiB in {:?} but only {:.1} GiB are available; use a lower precision (bf16) or a bank",
                        need as f64 / (1u64 << 30) as f64,
                        dtype,
                        avail as f64 / (1u64 << 30) as f64
                    ),
                });
            }
            // Loaded only now, dropped at the end of this block.
            let encoder = TextEncoder::load(&dir, self.dtype, &self.device)?;
            for (p, v) in missing.iter().zip(encoder.embed(&missing)?) {
                self.bank.insert(p, &v)?;
                fresh.insert(p.to_lowercase(), v);
            }
        }
        prompts
            .iter()
            .map(|p| {
                if let Some(v) = fresh.get(&p.to_lowercase()) {
                    return Ok(v.clone());
                }
                self.bank.get(p).ok_or_else(|| TextError::Bank {
                    path: PathBuf::new(),
                    reason: format!("prompt {p:?} has no vector"),
                })
            })
            .collect()
    }
}
