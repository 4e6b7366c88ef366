//! A training run: datasets → cache → sampler → background loader → gradient steps, with
//! validation, checkpoints, the log and the curves, and exact resumption.
//!
//! Output folder layout:
//! - `model/`: the latest checkpoint — a model folder (`plans.json`, `model.safetensors`,
//!   `voxtell.json`) that `voxtell predict -m` loads, plus the training state beside it
//!   (`optimizer.safetensors` with the momentum buffers, `state.json` with the epochs done and
//!   the configuration);
//! - `log.jsonl` (one line per epoch), `curves.png`, `config.toml` (as resolved), `cache/`.
//!
//! A checkpoint is written into a temporary folder and then swapped in whole, so weights and
//! state always belong together; an interrupted run resumes from the last checkpoint (every
//! `checkpoint_every` epochs, and whenever the run is stopped through the progress callback). Resuming reloads weights, momentum buffers and the epoch;
//! batches are a function of (seed, epoch, iteration, sample), so a resumed run computes exactly
//! what an uninterrupted one would.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use voxtell_fusion::{ModelDir, PlansNetwork, TextEncoderSpec, VoxTellConfig};
use voxtell_text::EmbeddingBank;

use crate::cache::{Cache, CacheOptions};
use crate::config::{ModelSizes, TrainConfig};
use crate::curves::{self, EpochLog};
use crate::data::{Dataset, Vocabulary, open_datasets};
use crate::error::{Result, TrainError};
use crate::loader::{Batch, Loader, LoaderConfig, make_batch};
use crate::rng::Rng;
use crate::sampler::{PromptKind, Sampler};
use crate::schedule::PolySchedule;
use crate::step::{StepOptions, Trainable};
use crate::text_noise::{NoiseLimits, perturb_vector};

/// Key mixed into the seed of the validation patches and the train/validation split.
const VALIDATION_KEY: u64 = 0x5641_4c49_4441_5445;
/// Key of the random streams of the prompt-vector noise (one stream per iteration, so that a
/// resumed run draws the same noise).
const TEXT_NOISE_KEY: u64 = 0x5445_5854_4e4f_4953;

/// The run's resumable state (`model/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// The configuration the run was started with.
    pub config: TrainConfig,
}

/// Progress of the run, reported after every iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Iterations done in this epoch.
    pub iteration: usize,
    /// Iterations per epoch.
    pub iterations: usize,
    /// Loss of the last iteration.
    pub loss: f64,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// The epoch's log, once the epoch is complete (validation included).
    pub epoch_log: Option<EpochLog>,
}

/// What a finished run returns.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The model folder of the last checkpoint.
    pub model_dir: PathBuf,
    /// The log of every epoch.
    pub log: Vec<EpochLog>,
    /// Whether the run stopped early because the progress callback asked.
    pub stopped: bool,
}

/// Everything prepared for the loop.
struct Prepared {
    trainable: Trainable,
    train_sampler: Arc<Sampler>,
    val_sampler: Option<Arc<Sampler>>,
    bank: EmbeddingBank,
    /// Each training prompt's vector noise (`None` when `text_noise` is 0).
    noise: Option<NoiseLimits>,
    text_spec: Option<TextEncoderSpec>,
    /// The training cases' voxel spacings, recorded in the exported `voxtell.json`.
    training_spacing: Option<voxtell_fusion::SpacingRange>,
}

/// Train (or, with `resume`, continue) the run described by `config`. `progress` is called
/// after every iteration and at the end of every epoch; returning `false` stops after the
/// current epoch's checkpoint.
pub fn train(
    config: &TrainConfig,
    resume: bool,
    mut progress: impl FnMut(&Progress) -> bool,
) -> Result<Summary> {
    config.check()?;
    let out = &config.output;
    std::fs::create_dir_all(out).map_err(|e| TrainError::file(out, e))?;
    let model_dir = out.join("model");
    let log_path = out.join("log.jsonl");
    recover_checkpoint(out)?;
    let state = if resume {
        let path = model_dir.join("state.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            TrainError::file(
                &path,
                format!("nothing to resume ({e}); start a new run instead of resuming (option `resume`)"),
            )
        })?;
        let s: RunState = serde_json::from_str(&text).map_err(|e| TrainError::file(&path, e))?;
        // Everything that shapes the computation must be the same; where the files are and how
        // many threads load data may differ.
        let comparable =
            |c: &TrainConfig| TrainConfig { output: PathBuf::new(), cache: None, workers: 0, ..c.clone() };
        if comparable(&s.config) != comparable(config) {
            return Err(TrainError::Config(format!(
                "{}: the configuration differs from the run being resumed (only output, cache and workers may change)",
                path.display()
            )));
        }
        Some(s)
    } else {
        if model_dir.join("state.json").exists() {
            return Err(TrainError::Config(format!(
                "{} already holds a run; resume it (option `resume`) or choose another output folder",
                out.display()
            )));
        }
        None
    };
    let toml_text = toml::to_string(config).map_err(|e| TrainError::Config(e.to_string()))?;
    voxtell_io::atomic::write_bytes(out.join("config.toml"), toml_text.as_bytes(), true)?;

    let mut prepared = prepare(config, &config.model, state.as_ref().map(|_| model_dir.as_path()))?;
    if state.is_some() {
        prepared.trainable.optimizer_mut().load(
            model_dir.join("optimizer.safetensors"),
            DType::F32,
            &Device::Cpu,
        )?;
    }
    let start_epoch = state.as_ref().map_or(0, |s| s.epochs_done);
    let mut log = if resume { curves::read_log(&log_path)? } else { Vec::new() };
    log.retain(|e| e.epoch < start_epoch);
    rewrite_log(&log_path, &log)?;

    let epochs = config.schedule.epochs;
    let ipe = config.schedule.iterations_per_epoch;
    let schedule = PolySchedule::new(config.lr0(), epochs).with_warmup(config.warmup());
    schedule.validate()?;
    let mut summary = Summary { model_dir: model_dir.clone(), log: log.clone(), stopped: false };
    if start_epoch >= epochs {
        return Ok(summary);
    }
    let loader = Loader::new(
        prepared.train_sampler.clone(),
        LoaderConfig {
            batch_size: config.schedule.batch_size,
            seed: config.seed,
            iterations_per_epoch: ipe as u64,
            start_epoch: start_epoch as u64,
            start_iteration: 0,
            end_epoch: Some(epochs as u64),
            workers: config.workers,
            capacity: 0,
        },
    )?;
    let mut epoch_start = Instant::now();
    let mut losses = Vec::with_capacity(ipe);
    for batch in loader {
        let batch = batch?;
        let (epoch, iteration) = (batch.epoch as usize, batch.iteration as usize);
        let lr = schedule.lr(epoch);
        let mut noise_rng = prepared
            .noise
            .as_ref()
            .map(|_| Rng::stream(config.seed ^ TEXT_NOISE_KEY, &[epoch as u64, iteration as u64]));
        let noise = prepared.noise.as_ref().zip(noise_rng.as_mut());
        let (image, text, target) = tensors(&batch, &prepared.bank, prepared.trainable.dtype(), noise)?;
        let (loss, grads) = prepared.trainable.gradients(&image, &text, &[target])?;
        if !loss.is_finite() {
            return Err(TrainError::NonFinite(format!(
                "loss {loss} at epoch {epoch}, iteration {iteration}"
            )));
        }
        prepared.trainable.apply(grads, lr)?;
        losses.push(loss);
        let mut go_on = progress(&Progress {
            epoch,
            epochs,
            iteration: iteration + 1,
            iterations: ipe,
            loss,
            lr,
            epoch_log: None,
        });
        if iteration + 1 < ipe {
            if !go_on {
                // Stop at the end of this epoch; finish it so that the checkpoint is whole.
                summary.stopped = true;
            }
            continue;
        }
        // End of an epoch: validation, log, checkpoint.
        let last = epoch + 1 == epochs;
        let (val_loss, val_dice, per_prompt) = match &prepared.val_sampler {
            Some(v) if (epoch + 1).is_multiple_of(config.validation.every) || last => {
                validate(&prepared.trainable, v, &prepared.bank, config)?
            }
            _ => (None, None, BTreeMap::new()),
        };
        let entry = EpochLog {
            epoch,
            lr,
            train_loss: losses.iter().sum::<f64>() / losses.len().max(1) as f64,
            val_loss,
            val_dice,
            val_dice_per_prompt: per_prompt,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        losses.clear();
        curves::append_log(&log_path, &entry)?;
        log.push(entry.clone());
        go_on &= !summary.stopped;
        let stop = !go_on
            || !progress(&Progress {
                epoch,
                epochs,
                iteration: ipe,
                iterations: ipe,
                loss,
                lr,
                epoch_log: Some(entry),
            });
        if last || stop || (epoch + 1).is_multiple_of(config.checkpoint_every) {
            checkpoint(&prepared, config, epoch + 1, out)?;
            curves::write_curves(&out.join("curves.png"), &log)?;
        }
        if last {
            summary.stopped = false;
        } else if stop {
            summary.stopped = true;
            break;
        }
        epoch_start = Instant::now();
    }
    summary.log = log;
    Ok(summary)
}

/// Read the data, build the caches, the samplers and the network.
fn prepare(config: &TrainConfig, sizes: &ModelSizes, resume_from: Option<&Path>) -> Result<Prepared> {
    let datasets = open_datasets(&config.datasets)?;
    let vocabulary = Vocabulary::from_file(&config.vocabulary)?;
    let bank = EmbeddingBank::read(&config.bank).map_err(|e| TrainError::Config(e.to_string()))?;
    check_bank(&datasets, &vocabulary, &bank, &config.bank)?;
    let r = config.sampling.text_noise;
    let noise = if r > 0.0 {
        let used = datasets.iter().filter_map(|d| vocabulary.datasets.get(&d.name));
        Some(NoiseLimits::new(used, &bank, r)?)
    } else {
        None
    };
    let (train_sets, val_sets) = split(&datasets, config.validation.fraction, config.seed);
    let cache_root = config.cache.clone().unwrap_or_else(|| config.output.join("cache"));
    let options = CacheOptions { threads: config.workers, ..CacheOptions::default() };
    let (train_cache, _) = Cache::build(cache_root.join("train"), &train_sets, &options)?;
    let training_spacing = train_cache.spacing_range();
    // The model folder the weights come from: the run's own checkpoint when resuming, else
    // `init.checkpoint`; opened and checked once.
    let folder = match resume_from.or(config.init.checkpoint.as_deref()) {
        Some(dir) => Some(ModelDir::open(dir)?),
        None => None,
    };
    let (plans, network) = match (&config.plans, &folder) {
        (Some(path), _) => {
            let plans = read_plans(path)?;
            let network = PlansNetwork::from_plans(&plans).map_err(|e| TrainError::file(path, e))?;
            (plans, network)
        }
        (None, Some(folder)) => (folder.plans().clone(), PlansNetwork::from_plans(folder.plans())?),
        (None, None) => return Err(TrainError::Config("no plans".into())),
    };
    let patch = network.patch_size;
    if let (Some(_), Some(_), Some(folder)) = (&config.plans, &config.init.checkpoint, &folder) {
        // The network is built from the checkpoint's folder, plans included.
        let own = folder.config().patch_size;
        if own != patch {
            return Err(TrainError::Config(format!(
                "plans patch {patch:?} differs from the checkpoint's {own:?} ({}); fine-tuning at another patch size is not supported yet, drop `plans`",
                folder.path().display()
            )));
        }
    }
    let mut sampling = config.sampling.clone();
    sampling.patch_size = patch;
    let train_sampler = Arc::new(Sampler::new(Arc::new(train_cache), &vocabulary, sampling.clone())?);
    let val_sampler = if val_sets.iter().any(|d| !d.cases.is_empty()) && config.validation.batches > 0 {
        let (val_cache, _) = Cache::build(cache_root.join("validation"), &val_sets, &options)?;
        let mut v = sampling;
        v.augment = crate::augment::AugmentConfig::none();
        Some(Arc::new(Sampler::new(Arc::new(val_cache), &vocabulary, v)?))
    } else {
        None
    };
    // One weight per decoder output (n_stages − 1): a longer list, such as the default five
    // weights for a model with fewer stages, is cut to the outputs the network has.
    let mut loss = config.loss.clone();
    let outputs = network.arch.n_stages - 1;
    loss.ds_weights.truncate(outputs.max(1));
    let options = StepOptions {
        loss,
        optimizer: config.schedule.optimizer_config(),
        clip_norm: Some(config.schedule.clip),
        init_seed: config.seed,
    };
    let trainable = match &folder {
        Some(folder) => {
            // A resumed run continues all weights; a new one may take only the encoder.
            let encoder_only = resume_from.is_none() && config.init.encoder_only;
            Trainable::from_folder(folder, encoder_only, options, DType::F32, &Device::Cpu)?
        }
        None => {
            let vc = VoxTellConfig {
                arch: network.arch,
                patch_size: patch,
                decoder_layer: sizes.decoder_layer,
                text_dim: bank.dim(),
                text_hidden: sizes.text_hidden,
                query_dim: sizes.query_dim,
                fusion_heads: sizes.fusion_heads,
                projection_hidden: sizes.projection_hidden,
                layers: sizes.layers,
                ffn_dim: sizes.ffn_dim,
                attention_heads: sizes.attention_heads,
            };
            Trainable::from_scratch(plans, vc, options, DType::F32, &Device::Cpu)?
        }
    };
    if trainable.config().text_dim != bank.dim() {
        return Err(TrainError::Config(format!(
            "the bank {} holds {}-wide vectors but the model takes {}-wide ones",
            config.bank.display(),
            bank.dim(),
            trainable.config().text_dim
        )));
    }
    let text_spec = config.text_encoder.clone();
    if let Some(t) = &text_spec
        && t.dim != bank.dim()
    {
        return Err(TrainError::Config(format!(
            "text_encoder {} is {}-wide but the bank {} holds {}-wide vectors",
            t.id,
            t.dim,
            config.bank.display(),
            bank.dim()
        )));
    }
    Ok(Prepared { trainable, train_sampler, val_sampler, bank, noise, text_spec, training_spacing })
}

/// Every prompt the sampler may draw must have a vector.
fn check_bank(
    datasets: &[Dataset],
    vocabulary: &Vocabulary,
    bank: &EmbeddingBank,
    path: &Path,
) -> Result<()> {
    let mut missing = BTreeSet::new();
    for d in datasets {
        let Some(v) = vocabulary.datasets.get(&d.name) else {
            return Err(TrainError::Vocabulary {
                path: vocabulary.path.clone(),
                key: d.name.clone(),
                reason: "the dataset has no vocabulary".into(),
            });
        };
        for p in v.entries.iter().flat_map(|e| e.prompts.iter()).chain(&v.negatives) {
            if bank.get(p).is_none() {
                missing.insert(p.clone());
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(TrainError::MissingVectors { path: path.to_path_buf(), prompts: missing.into_iter().collect() })
    }
}

/// Hold out `fraction` of each dataset's cases (at least one when it has two or more),
/// chosen with the run's seed.
fn split(datasets: &[Dataset], fraction: f64, seed: u64) -> (Vec<Dataset>, Vec<Dataset>) {
    let mut train = Vec::with_capacity(datasets.len());
    let mut val = Vec::with_capacity(datasets.len());
    for (i, d) in datasets.iter().enumerate() {
        let n = d.cases.len();
        let k = if fraction <= 0.0 || n < 2 {
            0
        } else {
            ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
        };
        let mut order: Vec<usize> = (0..n).collect();
        Rng::stream(seed ^ VALIDATION_KEY, &[i as u64]).shuffle(&mut order);
        let held: BTreeSet<usize> = order[..k].iter().copied().collect();
        let pick = |keep: bool| Dataset {
            cases: d
                .cases
                .iter()
                .enumerate()
                .filter(|(j, _)| held.contains(j) != keep)
                .map(|(_, c)| c.clone())
                .collect(),
            ..d.clone()
        };
        train.push(pick(true));
        val.push(pick(false));
    }
    (train, val)
}

/// The plans file named by the configuration's `plans`.
fn read_plans(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::file(path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::file(path, format!("not valid JSON: {e}")))
}

/// The batch as tensors: image (B, 1, P), prompt vectors (B, N, dim), targets (B, N, P); the
/// vectors perturbed by [`perturb_vector`] with each prompt's noise from `noise = (limits, rng)`.
fn tensors(
    batch: &Batch,
    bank: &EmbeddingBank,
    dtype: DType,
    mut noise: Option<(&NoiseLimits, &mut Rng)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let [p0, p1, p2] = batch.patch;
    let (b, n) = (batch.batch_size, batch.n_prompts);
    let image = Tensor::from_slice(&batch.image, (b, 1, p0, p1, p2), &Device::Cpu)?.to_dtype(dtype)?;
    let mut vectors = Vec::with_capacity(b * n * bank.dim());
    for p in batch.prompts.iter().flatten() {
        let v = bank
            .get(p)
            .ok_or_else(|| TrainError::Config(format!("prompt {p:?} has no vector in the bank")))?;
        let start = vectors.len();
        vectors.extend(v);
        if let Some((limits, rng)) = noise.as_mut() {
            perturb_vector(&mut vectors[start..], limits.of(p), rng);
        }
    }
    let text = Tensor::from_vec(vectors, (b, n, bank.dim()), &Device::Cpu)?.to_dtype(dtype)?;
    let target = Tensor::from_slice(&batch.targets, (b, n, p0, p1, p2), &Device::Cpu)?.to_dtype(dtype)?;
    Ok((image, text, target))
}

/// Mean validation loss, mean Dice, and Dice per vocabulary key.
type Validation = (Option<f64>, Option<f64>, BTreeMap<String, f64>);

/// Loss and Dice on the fixed validation patches (no augmentation, the same every epoch):
/// mean loss, mean Dice over prompts whose target is not empty, and Dice per vocabulary key.
fn validate(
    trainable: &Trainable,
    sampler: &Sampler,
    bank: &EmbeddingBank,
    config: &TrainConfig,
) -> Result<Validation> {
    let mut loss_sum = 0.0;
    let mut per_key: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut all = Vec::new();
    for i in 0..config.validation.batches {
        let batch =
            make_batch(sampler, config.seed ^ VALIDATION_KEY, 0, i as u64, config.schedule.batch_size)?;
        let (image, text, target) = tensors(&batch, bank, trainable.dtype(), None)?;
        let out = trainable.model().forward(&image, &text)?;
        let logits =
            out.outputs.first().ok_or_else(|| TrainError::Config("the network returned nothing".into()))?;
        let targets = crate::loss::deep_supervision_targets(&target, &out.outputs)?;
        loss_sum += crate::loss::deep_supervision_loss(&out.outputs, &targets, &trainable.options().loss)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let pred = logits.gt(0.0)?.to_dtype(DType::F32)?.flatten_from(2)?;
        let truth = target.to_dtype(DType::F32)?.flatten_from(2)?;
        let inter = (&pred * &truth)?.sum(2)?.to_vec2::<f32>()?;
        let ps = pred.sum(2)?.to_vec2::<f32>()?;
        let ts = truth.sum(2)?.to_vec2::<f32>()?;
        for (s, info) in batch.samples.iter().enumerate() {
            for (k, p) in info.prompts.iter().enumerate() {
                if p.kind != PromptKind::Positive || ts[s][k] == 0.0 {
                    continue;
                }
                let dice = 2.0 * f64::from(inter[s][k]) / f64::from(ps[s][k] + ts[s][k]);
                let key = p.key.clone().unwrap_or_else(|| batch.prompts[s][k].clone());
                let e = per_key.entry(key).or_insert((0.0, 0));
                e.0 += dice;
                e.1 += 1;
                all.push(dice);
            }
        }
    }
    let n = config.validation.batches.max(1) as f64;
    let mean = (!all.is_empty()).then(|| all.iter().sum::<f64>() / all.len() as f64);
    let per_key = per_key.into_iter().map(|(k, (s, c))| (k, s / c as f64)).collect();
    Ok((Some(loss_sum / n), mean, per_key))
}

/// Write the model folder with the training state after `epochs_done` epochs into a temporary
/// folder, then swap it in.
fn checkpoint(p: &Prepared, config: &TrainConfig, epochs_done: usize, out: &Path) -> Result<()> {
    let tmp = out.join(".model.tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::file(&tmp, e))?;
    }
    p.trainable.export(&tmp, p.text_spec.as_ref(), p.training_spacing)?;
    p.trainable.optimizer().save(tmp.join("optimizer.safetensors"))?;
    let state = RunState { epochs_done, config: config.clone() };
    let text = serde_json::to_string_pretty(&state).map_err(|e| TrainError::Config(e.to_string()))?;
    voxtell_io::atomic::write_bytes(tmp.join("state.json"), text.as_bytes(), true)?;
    swap_dir(&tmp, &out.join("model"))
}

/// Finish a checkpoint swap that a crash interrupted: if `model/` is missing but `model.old/`
/// exists (renamed aside, the new one not yet in place), put the old one back.
fn recover_checkpoint(out: &Path) -> Result<()> {
    let (model, old) = (out.join("model"), out.join("model.old"));
    if !model.exists() && old.join("state.json").is_file() {
        std::fs::rename(&old, &model).map_err(|e| TrainError::file(&old, e))?;
    }
    Ok(())
}

/// Replace the folder `dst` by `new` (the old one is renamed aside first and removed after;
/// [`recover_checkpoint`] undoes a swap cut short between the two renames).
fn swap_dir(new: &Path, dst: &Path) -> Result<()> {
    let old = dst.with_extension("old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::file(&old, e))?;
    }
    if dst.exists() {
        std::fs::rename(dst, &old).map_err(|e| TrainError::file(dst, e))?;
    }
    std::fs::rename(new, dst).map_err(|e| TrainError::file(dst, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::file(&old, e))?;
    }
    Ok(())
}

/// Replace the log by `log` (entries of epochs a resumed run redoes are dropped), atomically;
/// no file for an empty log. Epochs run afterwards are appended to it line by line.
fn rewrite_log(path: &Path, log: &[EpochLog]) -> Result<()> {
    if log.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(TrainError::file(path, e)),
            _ => Ok(()),
        };
    }
    let mut text = String::new();
    for entry in log {
        text += &curves::log_line(entry).map_err(|e| TrainError::file(path, e))?;
        text.push('\n');
    }
    voxtell_io::atomic::write_bytes(path, text.as_bytes(), true)?;
    Ok(())
}
