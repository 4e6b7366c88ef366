//! Prompt-vector noise (`[sampling] text_noise`): each training prompt's vector is turned by a
//! random angle, so that the prompt decoder learns a neighbourhood of every training prompt
//! instead of a point, and paraphrases near it land on its structure.
//!
//! The neighbourhoods are kept apart. For a prompt `v` and a prompt `u` with another target
//! (another vocabulary key, or a negative-only prompt) at an angle `θ`, the perturbed vector
//! `v̂ + r·ĝ` lies nearer `u` than `v` exactly when `ĝ·e < −sin(θ/2) / r`, `e` being the unit
//! vector from `û` to `v̂`; in `d` dimensions `ĝ·e` is about normal with variance `1/d`. So each
//! prompt's noise is limited to `√d · sin(θ/2) / 3`, with `θ` the angle to the nearest prompt of
//! another target: a perturbed vector then crosses to that prompt's side in about 0.13 % of
//! draws (three standard deviations). "kidney on the left side" and "kidney on the right side",
//! 9° apart in all-MiniLM-L6-v2 (384 dimensions), get at most 0.5; prompts far from every other
//! target get the full noise.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use voxtell_text::EmbeddingBank;

use crate::data::DatasetVocabulary;
use crate::error::{Result, TrainError};
use crate::rng::Rng;

/// The target a negative-only prompt stands for (nothing), as a key no vocabulary can hold
/// (vocabulary keys are label names).
const NEGATIVE: &str = "\0negative";

/// Standard deviations between a perturbed vector and the bisector toward the nearest prompt
/// of another target.
const SIGMAS: f64 = 3.0;

/// Rows of the cosine matrix computed at once (bounds the memory to `ROWS × prompts` floats).
const ROWS: usize = 512;

/// The noise of every training prompt: `r` limited per prompt as the module describes.
#[derive(Debug, Clone)]
pub(crate) struct NoiseLimits {
    r: f64,
    by_prompt: BTreeMap<String, f64>,
}

impl NoiseLimits {
    /// Limits for the prompts of `vocabularies` (those of the datasets being trained) with
    /// vectors from `bank` and the configured noise `r`. Every prompt must have a vector.
    pub(crate) fn new<'a>(
        vocabularies: impl IntoIterator<Item = &'a DatasetVocabulary>,
        bank: &EmbeddingBank,
        r: f64,
    ) -> Result<Self> {
        // Prompt → the targets it is trained for (a prompt may be listed in several datasets).
        let mut targets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for v in vocabularies {
            for e in &v.entries {
                for p in &e.prompts {
                    targets.entry(p).or_default().insert(&e.key);
                }
            }
            for p in &v.negatives {
                targets.entry(p).or_default().insert(NEGATIVE);
            }
        }
        let prompts: Vec<&str> = targets.keys().copied().collect();
        let n = prompts.len();
        let dim = bank.dim();
        let mut unit = Vec::with_capacity(n * dim);
        for p in &prompts {
            let v = bank
                .get(p)
                .ok_or_else(|| TrainError::Config(format!("prompt {p:?} has no vector in the bank")))?;
            let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
            unit.extend(v.iter().map(|&x| if norm > 0.0 { (f64::from(x) / norm) as f32 } else { 0.0 }));
        }
        let mut by_prompt = BTreeMap::new();
        if n == 0 {
            return Ok(NoiseLimits { r, by_prompt });
        }
        let all = Tensor::from_vec(unit, (n, dim), &Device::Cpu)?;
        let all_t = all.t()?.contiguous()?;
        for start in (0..n).step_by(ROWS) {
            let rows = ROWS.min(n - start);
            let cosines: Vec<Vec<f32>> = all.narrow(0, start, rows)?.matmul(&all_t)?.to_vec2()?;
            for (i, row) in cosines.iter().enumerate() {
                let p = prompts[start + i];
                let mine = &targets[p];
                let nearest = row
                    .iter()
                    .zip(&prompts)
                    .filter(|(_, q)| targets[**q].is_disjoint(mine))
                    .map(|(&c, _)| f64::from(c))
                    .fold(f64::NEG_INFINITY, f64::max);
                let limit = if nearest.is_finite() {
                    let angle = nearest.clamp(-1.0, 1.0).acos();
                    r.min((dim as f64).sqrt() * (angle / 2.0).sin() / SIGMAS)
                } else {
                    r
                };
                by_prompt.insert(p.to_string(), limit);
            }
        }
        Ok(NoiseLimits { r, by_prompt })
    }

    /// The noise of `prompt` (`r` for a prompt outside the vocabulary).
    pub(crate) fn of(&self, prompt: &str) -> f64 {
        self.by_prompt.get(prompt).copied().unwrap_or(self.r)
    }
}

/// `v ← |v| · (v̂ + r·ĝ) / |v̂ + r·ĝ|` with `ĝ` a random unit direction (Gaussian, normalised):
/// the norm kept, the direction turned by about `atan(r)` in many dimensions (where `ĝ` is
/// nearly orthogonal to `v̂`) and by at most `asin(r)` for `r < 1`; a zero vector or `r = 0`
/// leaves `v` alone.
pub(crate) fn perturb_vector(v: &mut [f32], r: f64, rng: &mut Rng) {
    let norm = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    if norm == 0.0 || r == 0.0 {
        return;
    }
    let g: Vec<f64> = (0..v.len()).map(|_| rng.normal()).collect();
    let g_norm = g.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    let w: Vec<f64> = v.iter().zip(&g).map(|(&x, &gi)| f64::from(x) / norm + r * gi / g_norm).collect();
    let w_norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for (x, wi) in v.iter_mut().zip(&w) {
        *x = (norm * wi / w_norm) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::VocabEntry;

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
        let n = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        dot / (n(a) * n(b))
    }

    #[test]
    fn perturbed_vectors_keep_their_norm_and_turn_by_the_set_angle() {
        let mut rng = Rng::new(1);
        let v: Vec<f32> = (0..384).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        for r in [0.25, 0.5, 1.0, 2.0] {
            let mut cosines = Vec::new();
            for _ in 0..50 {
                let mut w = v.clone();
                perturb_vector(&mut w, r, &mut rng);
                assert!((norm(&w) - norm(&v)).abs() < 1e-4 * norm(&v), "norm {} vs {}", norm(&w), norm(&v));
                cosines.push(cosine(&w, &v));
            }
            let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
            let expected = 1.0 / (1.0 + r * r).sqrt();
            assert!((mean - expected).abs() < 0.03, "r {r}: mean cosine {mean}, expected {expected}");
        }
        // Off, or nothing to turn: unchanged.
        let mut w = v.clone();
        perturb_vector(&mut w, 0.0, &mut rng);
        assert_eq!(w, v);
        let mut zero = vec![0.0f32; 8];
        perturb_vector(&mut zero, 1.0, &mut rng);
        assert!(zero.iter().all(|&x| x == 0.0));
        // The same stream, the same noise.
        let (mut a, mut b) = (v.clone(), v.clone());
        perturb_vector(&mut a, 0.5, &mut Rng::new(9));
        perturb_vector(&mut b, 0.5, &mut Rng::new(9));
        assert_eq!(a, b);
        assert_ne!(a, v);
    }

    /// A unit vector in 64 dimensions at `degrees` from axis 0 toward axis `toward`.
    fn at(degrees: f64, toward: usize) -> Vec<f32> {
        let mut v = vec![0.0f32; 64];
        let a = degrees.to_radians();
        v[0] = a.cos() as f32;
        v[toward] += a.sin() as f32;
        v
    }

    fn entry(key: &str, prompts: &[&str]) -> VocabEntry {
        VocabEntry {
            key: key.into(),
            label_names: vec![key.into()],
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_noise_stays_inside_each_prompts_own_neighbourhood() {
        // "left" and "right" 10° apart; "left too" is a synonym of "left" 4° from it (no limit
        // between them); "far" 80° from everything; "nothing" a negative-only prompt 30° from
        // "right" (toward another axis).
        let mut bank = EmbeddingBank::new(64);
        let vectors = [
            ("left", at(0.0, 1)),
            ("left too", at(4.0, 3)),
            ("right", at(10.0, 1)),
            ("far", at(80.0, 2)),
            ("nothing", {
                let mut v = at(10.0, 1);
                let a = 30f64.to_radians();
                v.iter_mut().for_each(|x| *x *= a.cos() as f32);
                v[4] = a.sin() as f32;
                v
            }),
        ];
        for (p, v) in &vectors {
            bank.insert(p, v).unwrap();
        }
        let vocab = DatasetVocabulary {
            entries: vec![
                entry("kidney_left", &["left", "left too"]),
                entry("kidney_right", &["right"]),
                entry("spleen", &["far"]),
            ],
            negatives: vec!["nothing".into()],
        };
        let r = 1.0;
        let limits = NoiseLimits::new([&vocab], &bank, r).unwrap();
        // √64 · sin(θ/2) / 3.
        let sin_half = |deg: f64| 8.0 * (deg.to_radians() / 2.0).sin() / 3.0;
        let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
        // Nearest other target: "left" → "right" (10°), "left too" → "right" (about 10.8°), "right"
        // → "left" (10°), "nothing" → "right" (30°), "far" → "left" (80°: the full r = 1).
        assert!(close(limits.of("left"), sin_half(10.0)), "{}", limits.of("left"));
        assert!(close(limits.of("right"), sin_half(10.0)), "{}", limits.of("right"));
        let left_too = cosine(&vectors[1].1, &vectors[2].1).acos().to_degrees();
        assert!(close(limits.of("left too"), sin_half(left_too)), "{}", limits.of("left too"));
        assert!(close(limits.of("nothing"), sin_half(30.0)), "{}", limits.of("nothing"));
        assert_eq!(limits.of("far"), r);
        // A prompt outside the vocabulary gets r; a small r is never raised.
        assert_eq!(limits.of("unknown"), r);
        let small = NoiseLimits::new([&vocab], &bank, 0.01).unwrap();
        assert!(vectors.iter().all(|(p, _)| small.of(p) == 0.01));
        // The property: perturbed "left" vectors stay nearer "left" than "right" (and the
        // reverse) but in about 0.13 % of draws, while each still turns; the full noise would
        // cross over in about a quarter of them (√64 · sin 5° / 1 = 0.7 standard deviations).
        let crossings = |noise: &dyn Fn(&str) -> f64| {
            let mut rng = Rng::new(3);
            let mut crossed = 0;
            for _ in 0..2000 {
                for (mine, other) in [(0, 2), (2, 0)] {
                    let mut w = vectors[mine].1.clone();
                    perturb_vector(&mut w, noise(vectors[mine].0), &mut rng);
                    let (to_mine, to_other) = (cosine(&w, &vectors[mine].1), cosine(&w, &vectors[other].1));
                    assert!(to_mine < 1.0 - 1e-6);
                    crossed += usize::from(to_other >= to_mine);
                }
            }
            crossed as f64 / 4000.0
        };
        let limited = crossings(&|p| limits.of(p));
        let full = crossings(&|_| r);
        assert!(limited < 0.005, "{limited}");
        assert!(full > 0.15, "{full}");
        // Every prompt needs a vector.
        let mut missing = vocab.clone();
        missing.entries.push(entry("aorta", &["aorta"]));
        let err = NoiseLimits::new([&missing], &bank, r).unwrap_err().to_string();
        assert!(err.contains("\"aorta\""), "{err}");
    }
}
