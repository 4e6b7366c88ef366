//! The files of a text-model folder that both encoders read: `config.json`'s `model_type`, the
//! sentence-transformers `modules.json` and the subfolder of its Transformer module, and the
//! safetensors weights (one file, or shards listed in an index).
//!
//! Files only: what the files mean for each encoder is in the `qwen` and `bert` modules.

use std::path::{Path, PathBuf};

use crate::error::{Result, TextError};

/// A JSON file, errors naming it.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let err = |reason: String| TextError::Model { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))
}

/// `model_type` of a `config.json`.
pub(crate) fn model_type(config: &Path) -> Result<String> {
    read_json(config)?
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| TextError::Model { path: config.to_path_buf(), reason: "no model_type".into() })
}

/// One entry of a sentence-transformers `modules.json`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct Module {
    #[serde(default)]
    idx: usize,
    /// The module's subfolder (`""` for the folder itself).
    #[serde(default)]
    pub(crate) path: String,
    /// The module's Python class (`sentence_transformers.models.Pooling`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

impl Module {
    /// The class name (`sentence_transformers.models.Pooling` → `Pooling`).
    pub(crate) fn class(&self) -> &str {
        self.kind.rsplit('.').next().unwrap_or_default()
    }
}

/// `modules.json` in order of `idx`, `None` when the folder has none.
pub(crate) fn modules(dir: &Path) -> Result<Option<Vec<Module>>> {
    let path = dir.join("modules.json");
    if !path.exists() {
        return Ok(None);
    }
    let mut list: Vec<Module> = serde_json::from_value(read_json(&path)?).map_err(|e| TextError::Model {
        path,
        reason: format!("not a sentence-transformers module list: {e}"),
    })?;
    list.sort_by_key(|m| m.idx);
    Ok(Some(list))
}

/// The folder holding the transformer (`config.json`, weights, tokenizer): the folder itself,
/// or the path of the first module of `modules.json` when that is a Transformer in a subfolder.
pub(crate) fn transformer_dir(dir: &Path) -> Result<PathBuf> {
    Ok(match modules(dir)? {
        Some(list) => match list.first() {
            Some(m) if m.class() == "Transformer" && !m.path.is_empty() => dir.join(&m.path),
            _ => dir.to_path_buf(),
        },
        None => dir.to_path_buf(),
    })
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
