//! The training configuration (`train.toml`): data, model, schedule, sampling, validation.
//!
//! ```toml
//! output = "runs/phantom"            # checkpoints, log, curves (relative to this file)
//! datasets = ["data/Dataset001_Phantom"]
//! vocabulary = "vocabulary.json"
//! bank = "bank.npz"                  # prompt vectors (voxtell embed)
//! plans = "plans.json"               # architecture and patch size (from scratch)
//! seed = 0
//!
//! [init]                             # or: checkpoint = "voxtell_v1.1", encoder_only = false
//!
//! [schedule]
//! epochs = 100
//! iterations_per_epoch = 250
//! batch_size = 2
//!
//! [sampling]                         # voxtell_train::sampler::SamplerConfig
//! foreground_probability = 0.85
//! key_weights = { liver_lesion = 3.0 }   # draw these entries' prompts more often (default 1)
//! text_noise = 0.5                   # random perturbation of the prompt vectors (default 0)
//!
//! [validation]
//! fraction = 0.2
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::loss::LossConfig;
use crate::optim::{AdamWConfig, OptimizerConfig, SgdConfig};
use crate::sampler::SamplerConfig;

/// Where the initial weights come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InitConfig {
    /// A model folder (`plans.json` + checkpoint) to start from; `None`: fresh weights drawn as
    /// the official initialisation.
    pub checkpoint: Option<PathBuf>,
    /// Take only the encoder's weights from the checkpoint; the rest starts fresh.
    pub encoder_only: bool,
}

/// Optimiser and schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Epochs.
    pub epochs: usize,
    /// Iterations (batches) per epoch (nnU-Net: 250).
    pub iterations_per_epoch: usize,
    /// Samples per batch.
    pub batch_size: usize,
    /// Initial learning rate (default 1e-2 from scratch, 1e-3 when fine-tuning).
    pub lr: Option<f64>,
    /// Linear warm-up epochs before the poly decay (default 0 from scratch, 50 when
    /// fine-tuning).
    pub warmup_epochs: Option<usize>,
    /// The optimiser: nnU-Net's SGD (default) or AdamW.
    pub optimizer: OptimizerKind,
    /// SGD momentum (Nesterov).
    pub momentum: f64,
    /// AdamW's moment decay rates.
    pub betas: [f64; 2],
    /// AdamW's ε.
    pub eps: f64,
    /// Weight decay: added to the gradient for SGD (L2), decoupled for AdamW.
    pub weight_decay: f64,
    /// Gradient-norm clip.
    pub clip: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            epochs: 1000,
            iterations_per_epoch: 250,
            batch_size: 2,
            lr: None,
            warmup_epochs: None,
            optimizer: OptimizerKind::Sgd,
            momentum: 0.99,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 3e-5,
            clip: 12.0,
        }
    }
}

/// Which optimiser [`ScheduleConfig`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with Nesterov momentum (nnU-Net's).
    Sgd,
    /// AdamW (decoupled weight decay).
    AdamW,
}

impl ScheduleConfig {
    /// The optimiser settings this schedule describes.
    pub fn optimizer_config(&self) -> OptimizerConfig {
        match self.optimizer {
            OptimizerKind::Sgd => OptimizerConfig::Sgd(SgdConfig {
                momentum: self.momentum,
                nesterov: true,
                weight_decay: self.weight_decay,
            }),
            OptimizerKind::AdamW => OptimizerConfig::AdamW(AdamWConfig {
                betas: self.betas,
                eps: self.eps,
                weight_decay: self.weight_decay,
            }),
        }
    }
}

/// Validation on held-out cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Fraction of each dataset's cases held out (at least one case when the dataset has two or
    /// more; 0 turns validation off).
    pub fraction: f64,
    /// Validation batches (fixed patches, no augmentation, the same every epoch).
    pub batches: usize,
    /// Validate every this many epochs (and after the last).
    pub every: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig { fraction: 0.2, batches: 8, every: 1 }
    }
}

/// Sizes of a model trained from scratch that the plans do not hold (VoxTell's own values by
/// default; a small demo model sets smaller ones). The text width comes from the bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSizes {
    /// Width of the prompt-decoder queries.
    pub query_dim: usize,
    /// Hidden width of the text projection.
    pub text_hidden: usize,
    /// Hidden width of the projections to the decoder stages.
    pub projection_hidden: usize,
    /// Fusion heads (channels per head = features of the stage).
    pub fusion_heads: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Transformer feed-forward width.
    pub ffn_dim: usize,
    /// Attention heads.
    pub attention_heads: usize,
    /// Encoder stage whose output is the prompt decoder's memory.
    pub decoder_layer: usize,
}

impl Default for ModelSizes {
    fn default() -> Self {
        ModelSizes {
            query_dim: 2048,
            text_hidden: 2048,
            projection_hidden: 2048,
            fusion_heads: 32,
            layers: 6,
            ffn_dim: 2048,
            attention_heads: 8,
            decoder_layer: 4,
        }
    }
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Output folder: checkpoints, training state, log and curves.
    pub output: PathBuf,
    /// nnU-Net raw dataset folders.
    pub datasets: Vec<PathBuf>,
    /// Vocabulary (JSON): dataset → label → prompts.
    pub vocabulary: PathBuf,
    /// Embedding bank holding a vector for every prompt of the vocabulary.
    pub bank: PathBuf,
    /// A plans file with the architecture and patch size (needed from scratch; with
    /// `init.checkpoint` the checkpoint's own plans are used when this is absent).
    #[serde(default)]
    pub plans: Option<PathBuf>,
    /// Preprocessed-data cache (default `{output}/cache`).
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// The run's seed.
    #[serde(default)]
    pub seed: u64,
    /// Initial weights.
    #[serde(default)]
    pub init: InitConfig,
    /// Optimiser and schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Loss.
    #[serde(default)]
    pub loss: LossConfig,
    /// Patch sampling and augmentation (the patch size always comes from the plans).
    #[serde(default)]
    pub sampling: SamplerConfig,
    /// Validation.
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Sizes of a model trained from scratch (ignored with `init.checkpoint`).
    #[serde(default)]
    pub model: ModelSizes,
    /// The text encoder the bank's vectors come from, written into the model's `voxtell.json`
    /// so that prediction refuses vectors of another kind (`id`, `dim`, `pooling` "last_token"
    /// or "mean", `normalize`, `instruction`). Absent: VoxTell's Qwen3-Embedding-4B when the
    /// bank is 2560-wide, else an unnamed encoder of the bank's width.
    #[serde(default)]
    pub text_encoder: Option<voxtell_fusion::TextEncoderSpec>,
    /// Save a checkpoint every this many epochs (and after the last, and when stopped): an
    /// interrupted run resumes from the last one.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Data-loader worker threads (0: cores − 1); also the threads that build the cache (0:
    /// all cores).
    #[serde(default)]
    pub workers: usize,
}

fn default_checkpoint_every() -> usize {
    10
}

impl TrainConfig {
    /// Read a TOML file; relative paths are taken relative to its folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
        let mut config = Self::from_toml(&text).map_err(|e| TrainError::file(path, e))?;
        // Absolute paths: the run's state keeps them, and a resumed run may start elsewhere.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(parent).map_err(|e| TrainError::file(parent, e))?;
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Parse TOML text (paths kept as written) and check the values.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: TrainConfig =
            toml::from_str(text).map_err(|e| TrainError::Config(format!("invalid TOML: {e}")))?;
        config.check()?;
        Ok(config)
    }

    /// Make relative paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.output);
        self.datasets.iter_mut().for_each(fix);
        fix(&mut self.vocabulary);
        fix(&mut self.bank);
        if let Some(p) = self.plans.as_mut() {
            fix(p);
        }
        if let Some(p) = self.cache.as_mut() {
            fix(p);
        }
        if let Some(p) = self.init.checkpoint.as_mut() {
            fix(p);
        }
    }

    /// Check the values that no later step would catch with a clear message.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        let s = &self.schedule;
        if self.datasets.is_empty() {
            return bad("no datasets".into());
        }
        if s.epochs == 0 || s.iterations_per_epoch == 0 || s.batch_size == 0 {
            return bad("schedule: epochs, iterations_per_epoch and batch_size must be at least 1".into());
        }
        if s.lr.is_some_and(|lr| !(lr > 0.0 && lr.is_finite())) {
            return bad(format!("schedule.lr must be positive, got {:?}", s.lr));
        }
        let momentum_ok = (0.0..1.0).contains(&s.momentum);
        let decay_ok = s.weight_decay.is_finite() && s.weight_decay >= 0.0;
        if !momentum_ok || !decay_ok || s.clip.is_nan() || s.clip <= 0.0 {
            return bad("schedule: momentum in [0, 1), weight_decay ≥ 0 and clip > 0 are required".into());
        }
        if !(s.betas.iter().all(|b| (0.0..1.0).contains(b)) && s.eps.is_finite() && s.eps > 0.0) {
            return bad(format!(
                "schedule: betas {:?} must lie in [0, 1) and eps {} must be > 0",
                s.betas, s.eps
            ));
        }
        if self.loss.ds_weights.is_empty()
            || self.loss.ds_weights.iter().any(|w| w.is_nan() || *w < 0.0)
            || self.loss.ds_weights.iter().sum::<f64>() <= 0.0
        {
            return bad(format!(
                "loss.ds_weights must be non-negative with a positive sum, got {:?}",
                self.loss.ds_weights
            ));
        }
        if self.loss.ds_weights.iter().any(|w| !w.is_finite()) || self.loss.ds_weights[0] <= 0.0 {
            return bad(format!(
                "loss.ds_weights must be finite with a positive first (full-resolution) weight, got {:?}",
                self.loss.ds_weights
            ));
        }
        let sp = &self.sampling;
        if sp.prompts_per_sample == 0
            || !(0.0..=1.0).contains(&sp.foreground_probability)
            || !(0.0..=1.0).contains(&sp.default_name_probability)
        {
            return bad("sampling: prompts_per_sample ≥ 1 and probabilities in [0, 1] are required".into());
        }
        sp.validate().map_err(TrainError::Config)?;
        sp.augment.validate().map_err(TrainError::Config)?;
        if !(0.0..1.0).contains(&self.validation.fraction) {
            return bad(format!("validation.fraction must be in [0, 1), got {}", self.validation.fraction));
        }
        if self.validation.every == 0 || self.checkpoint_every == 0 {
            return bad("validation.every and checkpoint_every must be at least 1".into());
        }
        if self.plans.is_none() && self.init.checkpoint.is_none() {
            return bad("give `plans` (architecture) or `init.checkpoint`".into());
        }
        Ok(())
    }

    /// Whether the run fine-tunes a checkpoint.
    pub fn fine_tunes(&self) -> bool {
        self.init.checkpoint.is_some()
    }

    /// The initial learning rate (1e-2 from scratch, 1e-3 when fine-tuning, unless set).
    pub fn lr0(&self) -> f64 {
        self.schedule.lr.unwrap_or(if self.fine_tunes() { 1e-3 } else { 1e-2 })
    }

    /// Warm-up epochs (0 from scratch, 50 when fine-tuning, unless set; never all epochs).
    pub fn warmup(&self) -> usize {
        self.schedule
            .warmup_epochs
            .unwrap_or(if self.fine_tunes() { 50 } else { 0 })
            .min(self.schedule.epochs - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
output = "runs/x"
datasets = ["data/D1"]
vocabulary = "vocab.json"
bank = "bank.npz"
plans = "plans.json"
"#;

    #[test]
    fn defaults_follow_the_issue() {
        let c = TrainConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(c.schedule.iterations_per_epoch, 250);
        assert_eq!(c.schedule.momentum, 0.99);
        assert_eq!(c.schedule.weight_decay, 3e-5);
        assert_eq!(c.schedule.clip, 12.0);
        assert_eq!(c.lr0(), 1e-2);
        assert_eq!(c.warmup(), 0);
        assert_eq!(c.sampling.foreground_probability, 0.85);
        assert!(c.sampling.key_weights.is_empty());
        let w = TrainConfig::from_toml(&format!("{MINIMAL}\n[sampling.key_weights]\nliver_lesion = 3.0\n"))
            .unwrap();
        assert_eq!(w.sampling.key_weights.get("liver_lesion"), Some(&3.0));
        assert_eq!(c.loss.ds_weights, vec![1.0, 0.5, 0.25, 0.125, 0.0625]);
        let ft = TrainConfig::from_toml(&format!("{MINIMAL}\n[init]\ncheckpoint = \"m\"\n")).unwrap();
        assert_eq!((ft.lr0(), ft.warmup()), (1e-3, 50));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_errors() {
        for extra in [
            "[schedule]\nepochs = 0\n",
            "[schedule]\nlr = -1.0\n",
            "[loss]\nds_weights = [0.0, 0.0]\n",
            "[validation]\nfraction = 1.5\n",
            "typo = 3\n",
            "[sampling]\nforeground_probabilty = 0.5\n",
            "[schedule]\noptimizer = \"adam\"\n",
            "[schedule]\noptimizer = \"adamw\"\nbetas = [0.9, 1.0]\n",
            "[schedule]\neps = 0.0\n",
            "[sampling]\nkey_weights = { liver = 0.0 }\n",
            "[sampling.key_weights]\nliver = -2.0\n",
            "[sampling]\ntext_noise = -0.5\n",
            "[sampling]\ntext_noise = nan\n",
        ] {
            let r = TrainConfig::from_toml(&format!("{MINIMAL}\n{extra}"));
            assert!(r.is_err(), "{extra}");
        }
        let no_arch = MINIMAL.replace("plans = \"plans.json\"", "");
        assert!(TrainConfig::from_toml(&no_arch).is_err());
    }

    #[test]
    fn optimizer_choice() {
        let c = TrainConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(
            c.schedule.optimizer_config(),
            OptimizerConfig::Sgd(SgdConfig { momentum: 0.99, nesterov: true, weight_decay: 3e-5 })
        );
        let text = format!(
            "{MINIMAL}\n[schedule]\noptimizer = \"adamw\"\nweight_decay = 0.01\nbetas = [0.8, 0.99]\n"
        );
        let c = TrainConfig::from_toml(&text).unwrap();
        assert_eq!(
            c.schedule.optimizer_config(),
            OptimizerConfig::AdamW(AdamWConfig { betas: [0.8, 0.99], eps: 1e-8, weight_decay: 0.01 })
        );
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = TrainConfig::from_file(&path).unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(c.output, base.join("runs/x"));
        assert_eq!(c.datasets[0], base.join("data/D1"));
    }
}
