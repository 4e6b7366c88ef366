//! Training samples: a patch of one cached case, its prompts and one binary target per prompt.
//!
//! Defaults follow the VoxTell paper (supplement §A.3, voxtell-spec §8.2):
//! - 3 prompts per sample, 2 positive (vocabulary entries with voxels in the case) and 1
//!   negative: an entry of the case's own dataset vocabulary whose labels are all empty in this
//!   case, or one of the dataset's negative-only prompts — never a concept the dataset does not
//!   annotate. With fewer positives, negatives fill in (and positives beyond the quota when
//!   negatives run out; repeats as a last resort);
//! - foreground oversampling 85 %: the patch is placed so that a random voxel of one of the
//!   sample's positive structures lies at its centre (nnU-Net's `get_bbox` with `force_fg`);
//!   otherwise at a uniformly random position inside the case (centred when the case is
//!   smaller than the patch);
//! - the default name with probability 0.25, a uniformly chosen synonym otherwise.
//!
//! Beyond the paper: `key_weights` makes some vocabulary entries more likely to be drawn, as a
//! positive when the case has them and as the negative when it lacks them (weighted sampling
//! without replacement, Efraimidis–Spirakis); without weights every entry is equally likely.
//!
//! The patch is resampled straight from the cached case through the spatial augmentation (see
//! [`crate::augment`]), reading only the slab of slices it needs.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, apply_intensity, sample_image, sample_labels};
use crate::cache::{Cache, CaseIndex};
use crate::data::{ResolvedVocabulary, Vocabulary};
use crate::error::{Result, TrainError};
use crate::rng::Rng;

/// Sampling settings (paper defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// Patch size along (S, A, R).
    pub patch_size: [usize; 3],
    /// Prompts per sample.
    pub prompts_per_sample: usize,
    /// Positive prompts per sample (when the case has enough present structures).
    pub positives_per_sample: usize,
    /// Probability of centring the patch on a foreground voxel of a positive structure.
    pub foreground_probability: f64,
    /// Probability of using an entry's default name rather than a synonym.
    pub default_name_probability: f64,
    /// Shuffle the order of the prompts within a sample (otherwise positives come first).
    pub shuffle_prompts: bool,
    /// Pick the dataset uniformly first, then a case of it (otherwise every case is equally
    /// likely, as nnU-Net).
    pub balance_datasets: bool,
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Relative weights of vocabulary entries (by key; others weigh 1) when the positives and
    /// the negatives of a sample are drawn: an entry of weight 3 is drawn as if it were listed
    /// three times. For small or rare structures (lesions) whose prompts would otherwise train
    /// seldom — in particular as the negative of the cases that lack them. Negative-only
    /// prompts weigh 1.
    pub key_weights: BTreeMap<String, f64>,
    /// Prompt-vector noise, applied by the trainer when it looks the sample's prompts up in
    /// the bank (training batches only): each vector `v` becomes `|v| · (v̂ + r·ĝ) / |v̂ + r·ĝ|`
    /// with `ĝ` a random unit direction, so its cosine to `v` is about `1 / √(1 + r²)`
    /// (0.89 for `r` = 0.5, 0.71 for 1). It teaches the prompt decoder a neighbourhood of each
    /// training prompt rather than the point, for paraphrases no training prompt matches. A
    /// prompt close to a prompt of another target gets less: at most `√d · sin(θ/2) / 3` for
    /// vectors of `d` dimensions and an angle `θ` to the nearest such prompt, so that its
    /// perturbed vectors stay nearer it than that prompt (but in about 0.13 % of draws). 0 (the
    /// default) turns it off.
    pub text_noise: f64,
}

impl SamplerConfig {
    /// Check the prompt-drawing extras: every key weight a positive number, `text_noise` in
    /// [0, 10]. (The vocabulary keys are checked by [`Sampler::new`], which knows them.)
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some((key, w)) = self.key_weights.iter().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
            return Err(format!(
                "sampling.key_weights: the weight of {key:?} is {w}; it must be a positive number"
            ));
        }
        if !(self.text_noise.is_finite() && (0.0..=10.0).contains(&self.text_noise)) {
            return Err(format!("sampling.text_noise must be in [0, 10], got {}", self.text_noise));
        }
        Ok(())
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            patch_size: [192, 192, 192],
            prompts_per_sample: 3,
            positives_per_sample: 2,
            foreground_probability: 0.85,
            default_name_probability: 0.25,
            shuffle_prompts: true,
            balance_datasets: false,
            augment: AugmentConfig::default(),
            key_weights: BTreeMap::new(),
            text_noise: 0.0,
        }
    }
}

/// Why a prompt was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptKind {
    /// The structure has voxels in the case.
    Positive,
    /// The dataset annotates the structure, but the case has no voxel of it.
    AbsentLabel,
    /// A negative-only prompt of the dataset.
    NegativeOnly,
}

/// What one prompt of a sample is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptInfo {
    /// Positive, absent label or negative-only.
    pub kind: PromptKind,
    /// The vocabulary key (`None` for negative-only prompts).
    pub key: Option<String>,
    /// Whether the text is the entry's default name.
    pub default_name: bool,
}

/// How a sample was drawn (for logging and tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleInfo {
    /// The dataset.
    pub dataset: String,
    /// The case.
    pub case: String,
    /// Centre of the patch in the cropped case, (S, A, R) voxel coordinates.
    pub centre: [f64; 3],
    /// Whether the patch was centred on a foreground voxel.
    pub foreground: bool,
    /// One entry per prompt.
    pub prompts: Vec<PromptInfo>,
}

/// One training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The image patch, (S, A, R).
    pub image: Array3<f32>,
    /// The prompt texts.
    pub prompts: Vec<String>,
    /// One binary mask per prompt (empty for negatives).
    pub targets: Vec<Array3<u8>>,
    /// How it was drawn.
    pub info: SampleInfo,
}

/// Draws [`Sample`]s from a [`Cache`].
#[derive(Debug, Clone)]
pub struct Sampler {
    cache: Arc<Cache>,
    vocabularies: Vec<ResolvedVocabulary>,
    cases: Vec<(usize, usize)>,
    config: SamplerConfig,
}

/// A chosen prompt source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Entry(usize),
    Negative(usize),
}

impl Sampler {
    /// A sampler over every case of `cache`, with each dataset's vocabulary resolved from
    /// `vocabulary` (a dataset without one is an error).
    pub fn new(cache: Arc<Cache>, vocabulary: &Vocabulary, config: SamplerConfig) -> Result<Self> {
        if config.prompts_per_sample == 0 {
            return Err(TrainError::Config("prompts_per_sample must be at least 1".into()));
        }
        if config.patch_size.contains(&0) {
            return Err(TrainError::Config(format!("patch size {:?} has an empty axis", config.patch_size)));
        }
        let mut vocabularies = Vec::with_capacity(cache.datasets.len());
        for d in &cache.datasets {
            vocabularies.push(vocabulary.resolve(&d.name, &d.labels)?);
        }
        config.validate().map_err(TrainError::Config)?;
        for key in config.key_weights.keys() {
            if !vocabularies.iter().any(|v| v.entries.iter().any(|e| &e.key == key)) {
                return Err(TrainError::Config(format!(
                    "sampling.key_weights: {key:?} is no vocabulary key of the datasets ({})",
                    cache.datasets.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let cases = cache.case_refs();
        if cases.is_empty() {
            return Err(TrainError::Config("the cache holds no cases".into()));
        }
        Ok(Sampler { cache, vocabularies, cases, config })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The cache sampled from.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The resolved vocabulary of dataset `index` (in the cache's order).
    pub fn vocabulary(&self, index: usize) -> Option<&ResolvedVocabulary> {
        self.vocabularies.get(index)
    }

    /// Number of cases.
    pub fn num_cases(&self) -> usize {
        self.cases.len()
    }

    /// Draw a sample: a case (uniformly, or dataset first with `balance_datasets`), then
    /// [`Sampler::sample_case`].
    pub fn sample(&self, rng: &mut Rng) -> Result<Sample> {
        let pick = if self.config.balance_datasets {
            let non_empty: Vec<usize> = (0..self.cache.datasets.len())
                .filter(|&d| !self.cache.datasets[d].cases.is_empty())
                .collect();
            let d = non_empty[rng.index(non_empty.len())];
            // `cases` lists the datasets in order, so a dataset's cases are contiguous.
            let first: usize = self.cache.datasets[..d].iter().map(|x| x.cases.len()).sum();
            first + rng.index(self.cache.datasets[d].cases.len())
        } else {
            rng.index(self.cases.len())
        };
        self.sample_case(pick, rng)
    }

    /// Draw a sample from case `index` (in [`Cache::case_refs`] order).
    pub fn sample_case(&self, index: usize, rng: &mut Rng) -> Result<Sample> {
        let &(d, c) = self.cases.get(index).ok_or_else(|| {
            TrainError::Config(format!("case index {index} out of range ({})", self.cases.len()))
        })?;
        let case = &self.cache.datasets[d].cases[c];
        let vocab = &self.vocabularies[d];
        let cfg = &self.config;
        let patch = cfg.patch_size;

        // Prompts.
        let (sources, kinds) = choose_sources(vocab, case, cfg, rng)?;
        let mut prompts = Vec::with_capacity(sources.len());
        let mut infos = Vec::with_capacity(sources.len());
        for (&src, &kind) in sources.iter().zip(&kinds) {
            match src {
                Source::Entry(e) => {
                    let entry = &vocab.entries[e];
                    let use_default = rng.bernoulli(cfg.default_name_probability) || entry.prompts.len() == 1;
                    let text = if use_default {
                        entry.prompts[0].clone()
                    } else {
                        entry.prompts[1 + rng.index(entry.prompts.len() - 1)].clone()
                    };
                    prompts.push(text);
                    infos.push(PromptInfo { kind, key: Some(entry.key.clone()), default_name: use_default });
                }
                Source::Negative(n) => {
                    prompts.push(vocab.negatives[n].clone());
                    infos.push(PromptInfo { kind, key: None, default_name: true });
                }
            }
        }

        // Patch location (nnU-Net get_bbox; need_to_pad only where the case is smaller).
        let shape = case.shape;
        let lbs: [i64; 3] = std::array::from_fn(|a| -((patch[a].saturating_sub(shape[a]) / 2) as i64));
        let ubs: [i64; 3] = std::array::from_fn(|a| {
            let pad = patch[a].saturating_sub(shape[a]);
            shape[a] as i64 + (pad / 2 + pad % 2) as i64 - patch[a] as i64
        });
        let force_fg = rng.bernoulli(cfg.foreground_probability);
        let fg_voxel = if force_fg { foreground_voxel(vocab, case, &sources, &kinds, rng) } else { None };
        let lower: [i64; 3] = match fg_voxel {
            Some(v) => std::array::from_fn(|a| lbs[a].max(i64::from(v[a]) - (patch[a] / 2) as i64)),
            None => std::array::from_fn(|a| rng.int_inclusive(lbs[a], ubs[a])),
        };
        let centre: [f64; 3] = std::array::from_fn(|a| lower[a] as f64 + (patch[a] as f64 - 1.0) / 2.0);

        // Augmentation parameters, then the slab of slices the patch reads.
        let params = cfg.augment.sample(rng);
        let ext = params.spatial.source_extent(centre, patch);
        let s0 = (ext[0][0].floor() - 1.0).max(0.0) as usize;
        let s1 = ((ext[0][1].ceil() + 2.0).max(0.0) as usize).min(shape[0]);
        let slab = self.cache.read_slab(case, s0..s1.max(s0))?;
        let local = [centre[0] - slab.start as f64, centre[1], centre[2]];
        let mut image = sample_image(slab.image.view(), local, patch, &params.spatial);
        let labels = sample_labels(slab.labels.view(), local, patch, &params.spatial);
        drop(slab);
        apply_intensity(&mut image, &params, &cfg.augment);

        // Targets.
        let targets = sources
            .iter()
            .zip(&kinds)
            .map(|(&src, &kind)| match (src, kind) {
                (Source::Entry(e), PromptKind::Positive) => {
                    let values = &vocab.entries[e].values;
                    labels.mapv(|v| u8::from(v != 0 && values.binary_search(&v).is_ok()))
                }
                _ => Array3::zeros(patch),
            })
            .collect();

        Ok(Sample {
            image,
            prompts,
            targets,
            info: SampleInfo {
                dataset: case.dataset.clone(),
                case: case.id.clone(),
                centre,
                foreground: fg_voxel.is_some(),
                prompts: infos,
            },
        })
    }
}

/// Whether any of an entry's labels has voxels in the case.
fn present(values: &[u16], case: &CaseIndex) -> bool {
    values.iter().any(|&v| case.voxels(v) > 0)
}

/// Choose the prompt sources of a sample and their kinds.
fn choose_sources(
    vocab: &ResolvedVocabulary,
    case: &CaseIndex,
    cfg: &SamplerConfig,
    rng: &mut Rng,
) -> Result<(Vec<Source>, Vec<PromptKind>)> {
    let n = cfg.prompts_per_sample;
    let mut positives = Vec::new();
    let mut negatives = Vec::new();
    for (i, e) in vocab.entries.iter().enumerate() {
        if present(&e.values, case) {
            positives.push((Source::Entry(i), PromptKind::Positive));
        } else {
            negatives.push((Source::Entry(i), PromptKind::AbsentLabel));
        }
    }
    negatives.extend((0..vocab.negatives.len()).map(|i| (Source::Negative(i), PromptKind::NegativeOnly)));
    if positives.is_empty() && negatives.is_empty() {
        return Err(TrainError::Config(format!(
            "dataset {}: no prompt available for case {}",
            vocab.dataset, case.id
        )));
    }
    // Random order of each pool (weighted where weights are set), then take from the front.
    if cfg.key_weights.is_empty() {
        rng.shuffle(&mut positives);
        rng.shuffle(&mut negatives);
    } else {
        let weight = |src: &Source| match src {
            Source::Entry(e) => cfg.key_weights.get(&vocab.entries[*e].key).copied().unwrap_or(1.0),
            Source::Negative(_) => 1.0,
        };
        weighted_order(&mut positives, |(s, _)| weight(s), rng);
        weighted_order(&mut negatives, |(s, _)| weight(s), rng);
    }
    let n_pos = cfg.positives_per_sample.min(n).min(positives.len());
    let n_neg = (n - n_pos).min(negatives.len());
    let mut chosen: Vec<(Source, PromptKind)> = Vec::with_capacity(n);
    chosen.extend_from_slice(&positives[..n_pos]);
    chosen.extend_from_slice(&negatives[..n_neg]);
    // Not enough negatives: further positives.
    let extra = (n - chosen.len()).min(positives.len() - n_pos);
    chosen.extend_from_slice(&positives[n_pos..n_pos + extra]);
    // Still short (a tiny vocabulary): repeat.
    let pool: Vec<(Source, PromptKind)> = positives.iter().chain(&negatives).copied().collect();
    while chosen.len() < n {
        chosen.push(pool[rng.index(pool.len())]);
    }
    if cfg.shuffle_prompts {
        rng.shuffle(&mut chosen);
    }
    Ok(chosen.into_iter().unzip())
}

/// Order `items` at random so that taking the first `k` is weighted sampling without
/// replacement (Efraimidis–Spirakis: item `i` gets the key `ln(u_i) / w_i`, largest first).
fn weighted_order<T: Copy>(items: &mut [T], weight: impl Fn(&T) -> f64, rng: &mut Rng) {
    let mut keyed: Vec<(f64, T)> =
        items.iter().map(|it| ((1.0 - rng.uniform()).ln() / weight(it), *it)).collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (slot, (_, it)) in items.iter_mut().zip(keyed) {
        *slot = it;
    }
}

/// A random foreground voxel of one of the sample's positive structures (uniform over those
/// structures, then over their present label values, then over the stored coordinates).
fn foreground_voxel(
    vocab: &ResolvedVocabulary,
    case: &CaseIndex,
    sources: &[Source],
    kinds: &[PromptKind],
    rng: &mut Rng,
) -> Option<[u16; 3]> {
    let mut entries: Vec<usize> = sources
        .iter()
        .zip(kinds)
        .filter_map(|(s, k)| match (s, k) {
            (Source::Entry(e), PromptKind::Positive) => Some(*e),
            _ => None,
        })
        .collect();
    entries.sort_unstable();
    entries.dedup();
    let candidates: BTreeMap<usize, Vec<u16>> = entries
        .into_iter()
        .map(|e| {
            let vals: Vec<u16> = vocab.entries[e]
                .values
                .iter()
                .copied()
                .filter(|v| case.labels.get(v).is_some_and(|s| !s.coords.is_empty()))
                .collect();
            (e, vals)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let keys: Vec<&usize> = candidates.keys().collect();
    let vals = &candidates[keys[rng.index(keys.len())]];
    let v = vals[rng.index(vals.len())];
    let coords = &case.labels.get(&v)?.coords;
    coords.get(rng.index(coords.len())).copied()
}
