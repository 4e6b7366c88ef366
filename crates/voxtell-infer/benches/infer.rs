//! Criterion bench of sliding-window inference on the CPU:
//!
//! - `blend/*`: [`voxtell_infer::sliding::blend`] alone, a 96³ padded volume in 32³ tiles at
//!   step 0.5 (5 × 5 × 5 = 125 tiles), with a trivial "network" that hands back a precomputed
//!   output; 1 and 4 prompts, f16 (official) and f32 accumulators. This is the pure cost of
//!   the Gaussian weighting, accumulation and final division (plus one copy of the output per
//!   tile, as a network would return). Throughput: accumulated values (tile voxels × prompts).
//! - `predict/*`: the whole [`voxtell_infer::Predictor::predict`] (RAS reorientation, crop,
//!   z-score, 48 tiles of the tiny fixture network `fixtures/fusion/cfg_a` with random weights,
//!   blending, threshold) on a synthetic 64 × 80 × 72 volume with 2 prompts of the fixture bank.
//!   Throughput: volume voxels.
//!
//! ```text
//! cargo bench -p voxtell-infer --bench infer              # about a minute on 2 cores
//! cargo bench -p voxtell-infer --bench infer -- blend     # only the blending
//! ```
//! Figures: docs/performance.md, "Sliding-window inference (tiny model)".

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType, Device};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use voxtell_infer::preprocess::pad_to_patch;
use voxtell_infer::sliding::{Accumulate, Window, blend};
use voxtell_infer::{PredictOptions, Predictor};
use voxtell_io::Volume;
use voxtell_text::{EmbeddingBank, PromptVectors};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A synthetic scan of `shape` voxels (every axis at least the fixture scan's 53 × 42 × 24):
/// a bright ellipsoid in a darker, textured background, non-zero everywhere so that the crop
/// to the non-zero box keeps the whole volume. (The facade has no ndarray dependency; the array
/// comes from padding the fixture scan to `shape` and is then overwritten.)
fn synthetic(shape: [usize; 3]) -> Volume {
    let scan = voxtell_io::read(fixtures().join("infer/predict/images/ct_oblique.nii.gz")).unwrap();
    let (mut data, _) = pad_to_patch(scan.data, shape);
    assert_eq!(data.shape(), shape);
    let c: [f32; 3] = std::array::from_fn(|a| shape[a] as f32 / 2.0);
    for ((i, j, k), v) in data.indexed_iter_mut() {
        let r2 =
            [i, j, k].iter().zip(&c).map(|(&x, &c)| ((x as f32 - c) / (0.35 * 2.0 * c)).powi(2)).sum::<f32>();
        let texture = ((i * 7 + j * 13 + k * 29) % 17) as f32;
        *v = if r2 < 1.0 { 60.0 + texture } else { -900.0 + 10.0 * texture };
    }
    Volume::new(data, voxtell_io::orientation::IDENTITY)
}

fn blending(c: &mut Criterion) {
    let shape = [96, 96, 96];
    let patch = [32, 32, 32];
    let (padded, _) = pad_to_patch(
        voxtell_io::read(fixtures().join("infer/predict/images/ct_oblique.nii.gz")).unwrap().data,
        shape,
    );
    let window = Window::new(shape, patch, 0.5).unwrap();
    let tiles = window.tiles().len();
    let tile_len: usize = patch.iter().product();
    let mut group = c.benchmark_group("blend");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(4));
    for n_prompts in [1, 4] {
        // Logits of a plausible range (about ±8), different per prompt and voxel.
        let pred: Vec<f32> = (0..n_prompts * tile_len).map(|i| 8.0 * ((i as f32) * 0.001).sin()).collect();
        group.throughput(Throughput::Elements((tiles * tile_len * n_prompts) as u64));
        for acc in [Accumulate::F16, Accumulate::F32] {
            let id = BenchmarkId::new(
                format!("{acc:?}").to_lowercase(),
                format!("96^3_{tiles}tiles_{n_prompts}p"),
            );
            group.bench_function(id, |b| {
                b.iter(|| {
                    blend(padded.view(), &window, n_prompts, acc, |_tile| Ok(pred.clone()), |_, _| true)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn predict(c: &mut Criterion) {
    let volume = synthetic([64, 80, 72]);
    let bank = EmbeddingBank::read(fixtures().join("infer/predict/bank.npz")).unwrap();
    let vectors = PromptVectors::new(bank, None, DType::F32, &Device::Cpu);
    let mut predictor = Predictor::from_dir(
        fixtures().join("fusion/cfg_a"),
        vectors,
        PredictOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let prompts = ["liver", "left kidney"];
    let masks = predictor.predict(&volume, &prompts).unwrap();
    let plan = masks.plan();
    eprintln!(
        "predict: {:?} voxels, (S, A, R) {:?}, {} tiles of {:?}, {} pass(es), {} prompt(s) per pass",
        volume.shape(),
        masks.ras_shape(),
        plan.tiles,
        predictor.model().config().patch_size,
        plan.passes,
        plan.prompt_group
    );
    let mut group = c.benchmark_group("predict");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(12));
    group.throughput(Throughput::Elements(volume.data.len() as u64));
    group.bench_function(format!("cfg_a_64x80x72_{}tiles_2p", plan.tiles), |b| {
        b.iter(|| predictor.predict(black_box(&volume), &prompts).unwrap())
    });
    group.finish();
}

criterion_group!(benches, blending, predict);
criterion_main!(benches);
