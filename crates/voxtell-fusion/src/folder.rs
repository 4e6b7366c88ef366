//! The model folder, the one place that knows its layout:
//!
//! ```text
//! plans.json                       nnU-Net plans; VoxTell builds its `3d_fullres` configuration
//! model.safetensors                the weights (a converted or trained folder), preferred, else
//! fold_0/checkpoint_final.pth      the weights as the official release ships them
//! voxtell.json                     optional (`ModelMeta`): memory stage, heads, text encoder,
//!                                  training spacings
//! ```
//!
//! [`ModelDir::open`] reads and checks all of it once — the plans, the weights' shapes, the
//! metadata's overrides and that the text encoder it names gives vectors of the width the
//! weights take — so every caller (prediction, training, `info`, `convert`) sees the same
//! folder the same way. [`ModelDir::write`] writes one, each file atomically. Where the
//! published folder is found (a path, `$VOXTELL_MODEL`, the Hugging Face cache) is
//! [`resolve_model_dir`]; the published embedding bank is [`resolve_bank`].

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::checkpoint::Checkpoint;
use crate::error::{FusionError, Result};
use crate::meta::{ModelMeta, TextEncoderSpec};
use crate::model::{VoxTellConfig, VoxTellModel};
use crate::plans::PlansNetwork;

mod lookup;

pub use lookup::{bank_search_places, resolve_bank, resolve_model_dir};

/// The plans file.
const PLANS_FILE: &str = "plans.json";
/// The weights of a converted or trained folder.
const SAFETENSORS_FILE: &str = "model.safetensors";
/// The weights of the official release, under [`PTH_FOLDER`].
const PTH_FILE: &str = "checkpoint_final.pth";
/// The folder of [`PTH_FILE`].
const PTH_FOLDER: &str = "fold_0";
/// The metadata file.
const META_FILE: &str = "voxtell.json";
/// The weights of a model folder: `model.safetensors` when present, else the official
/// `fold_0/checkpoint_final.pth` (which may be missing too; opening it then says so).
fn weights_file(dir: &Path) -> PathBuf {
    let safetensors = dir.join(SAFETENSORS_FILE);
    if safetensors.exists() { safetensors } else { dir.join(PTH_FOLDER).join(PTH_FILE) }
}

/// Whether `dir` looks like a model folder (it holds a `plans.json`), as opposed to a scan.
pub fn is_model_dir(dir: &Path) -> bool {
    dir.join(PLANS_FILE).is_file()
}

/// An opened, checked model folder: its plans, weights, optional metadata and the sizes of the
/// network they describe.
#[derive(Debug, Clone)]
pub struct ModelDir {
    path: PathBuf,
    plans: serde_json::Value,
    checkpoint: Checkpoint,
    meta: Option<ModelMeta>,
    config: VoxTellConfig,
}

impl ModelDir {
    /// Open a model folder: read `plans.json`, open the weights (`model.safetensors` when
    /// present, else `fold_0/checkpoint_final.pth`), read `voxtell.json` when present, and build
    /// the [`VoxTellConfig`] from the plans and the weights' shapes with the metadata's memory
    /// stage and attention heads. The metadata's text encoder must give vectors of the width the
    /// weights take. Every error names the file at fault.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let path = dir.as_ref().to_path_buf();
        let plans_path = path.join(PLANS_FILE);
        let plans_error = |reason: String| FusionError::File { path: plans_path.clone(), reason };
        let text = std::fs::read_to_string(&plans_path).map_err(|e| plans_error(e.to_string()))?;
        let plans: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| plans_error(format!("not valid JSON: {e}")))?;
        let network = PlansNetwork::from_plans(&plans).map_err(|e| plans_error(e.to_string()))?;
        let weights = weights_file(&path);
        if !weights.exists() {
            return Err(FusionError::File {
                path: weights,
                reason: format!(
                    "no weights: the folder has neither {SAFETENSORS_FILE} nor {PTH_FOLDER}/{PTH_FILE}"
                ),
            });
        }
        let checkpoint = Checkpoint::open(&weights)?;
        let mut config = VoxTellConfig::from_network_and_checkpoint(network, &checkpoint)?;
        let meta = read_meta(&path)?;
        if let Some(meta) = &meta {
            apply_meta(&mut config, meta, &path.join(META_FILE), checkpoint.path())?;
        }
        Ok(ModelDir { path, plans, checkpoint, meta, config })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed `plans.json`.
    pub fn plans(&self) -> &serde_json::Value {
        &self.plans
    }

    /// The weights.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The file the weights come from (`model.safetensors` or `fold_0/checkpoint_final.pth`).
    pub fn weights_path(&self) -> &Path {
        self.checkpoint.path()
    }

    /// The folder's `voxtell.json`, `None` when it has none (the published folder).
    pub fn meta(&self) -> Option<&ModelMeta> {
        self.meta.as_ref()
    }

    /// The network's sizes, `voxtell.json`'s overrides applied.
    pub fn config(&self) -> &VoxTellConfig {
        &self.config
    }

    /// Build the network in `dtype` on `device`.
    pub fn load(&self, dtype: DType, device: &Device) -> Result<VoxTellModel> {
        VoxTellModel::load(self.config.clone(), &self.checkpoint, dtype, device)
    }

    /// Write a model folder that [`ModelDir::open`] reads: `model.safetensors` (every canonical
    /// tensor of `weights`, in its own dtype), `plans.json` and `voxtell.json`, each through the
    /// atomic writer, the metadata last. The three must fit together (the plans and weights
    /// describe one network, the metadata's text width is the weights'); nothing is written
    /// otherwise. Without `overwrite` a folder that holds any of the three files is refused
    /// before anything is written.
    pub fn write(
        dir: impl AsRef<Path>,
        plans: &serde_json::Value,
        weights: &Checkpoint,
        meta: &ModelMeta,
        overwrite: bool,
    ) -> Result<()> {
        let dir = dir.as_ref();
        let files = [dir.join(SAFETENSORS_FILE), dir.join(PLANS_FILE), dir.join(META_FILE)];
        if !overwrite && let Some(existing) = files.iter().find(|f| f.exists()) {
            return Err(FusionError::File {
                path: existing.clone(),
                reason: "exists (overwriting was not requested)".into(),
            });
        }
        let [weights_path, plans_path, meta_path] = files;
        // Refuse a folder that would not open again.
        let mut config = VoxTellConfig::from_plans_and_checkpoint(plans, weights)?;
        apply_meta(&mut config, meta, &meta_path, weights.path())?;
        let plans_text = serde_json::to_string_pretty(plans)
            .map_err(|e| FusionError::File { path: plans_path.clone(), reason: e.to_string() })?;
        let meta_text = serde_json::to_string_pretty(meta)
            .map_err(|e| FusionError::File { path: meta_path.clone(), reason: e.to_string() })?;
        std::fs::create_dir_all(dir)
            .map_err(|e| FusionError::File { path: dir.to_path_buf(), reason: e.to_string() })?;
        weights.write_safetensors(&weights_path, overwrite)?;
        voxtell_io::atomic::write_bytes(&plans_path, (plans_text + "\n").as_bytes(), overwrite)?;
        voxtell_io::atomic::write_bytes(&meta_path, (meta_text + "\n").as_bytes(), overwrite)?;
        Ok(())
    }
}

impl ModelMeta {
    /// Read only `voxtell.json` of a model folder, `None` when it has none (the published
    /// folder). [`ModelDir::open`] reads it with the rest and checks it against the weights;
    /// this is for a caller that needs the metadata without the weights.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        read_meta(dir)
    }
}

/// `voxtell.json` of `dir`, if present.
fn read_meta(dir: &Path) -> Result<Option<ModelMeta>> {
    let path = dir.join(META_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FusionError::File { path, reason: e.to_string() }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| FusionError::File { path, reason: format!("invalid metadata: {e}") })
}

/// Apply the metadata's memory stage and attention heads to `config`, after checking them and
/// the text width against the network (`meta_path` and `weights` name the files in errors).
fn apply_meta(config: &mut VoxTellConfig, meta: &ModelMeta, meta_path: &Path, weights: &Path) -> Result<()> {
    let bad = |reason: String| Err(FusionError::File { path: meta_path.to_path_buf(), reason });
    if meta.text_encoder.dim != config.text_dim {
        return bad(format!(
            "names text encoder {} of width {}, but the weights ({}) take {}-wide vectors",
            meta.text_encoder.id,
            meta.text_encoder.dim,
            weights.display(),
            config.text_dim
        ));
    }
    if meta.decoder_layer >= config.arch.n_stages {
        return bad(format!(
            "decoder_layer {} is not an encoder stage (0..{})",
            meta.decoder_layer, config.arch.n_stages
        ));
    }
    if meta.attention_heads == 0 || !config.query_dim.is_multiple_of(meta.attention_heads) {
        return bad(format!(
            "attention_heads {} does not divide the query width {}",
            meta.attention_heads, config.query_dim
        ));
    }
    if let Some(range) = &meta.training_spacing {
        range.validate().or_else(bad)?;
    }
    config.decoder_layer = meta.decoder_layer;
    config.attention_heads = meta.attention_heads;
    Ok(())
}

impl VoxTellModel {
    /// Load a model folder: `plans.json` and `fold_0/checkpoint_final.pth` (or a
    /// `model.safetensors` beside `plans.json`, preferred when present), with `voxtell.json`
    /// when the folder has one. The same as `ModelDir::open(dir)?.load(dtype, device)`.
    pub fn from_dir(dir: impl AsRef<Path>, dtype: DType, device: &Device) -> Result<Self> {
        ModelDir::open(dir)?.load(dtype, device)
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
                training_spacing: None,
            }
        }
    };
    ModelDir::write(out_dir, source.plans(), source.checkpoint(), &meta, overwrite)
}
