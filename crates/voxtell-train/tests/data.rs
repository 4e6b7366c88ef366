//! Data-side tests on a synthetic nnU-Net dataset written by the test itself: datasets and
//! vocabulary, the preprocessed cache, prompt/patch sampling, augmentation alignment and the
//! background loader.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ndarray::{Array3, s};
use voxtell_io::{Affine, WriteOptions, write_nifti};
use voxtell_train::TrainError;
use voxtell_train::augment::{AugmentConfig, SpatialParams, sample_image, sample_labels};
use voxtell_train::cache::{Cache, CacheOptions, ImageDtype};
use voxtell_train::data::{Dataset, Vocabulary, crop, crop_and_normalize, nonzero_bbox, open_datasets};
use voxtell_train::loader::{Loader, LoaderConfig, make_batch};
use voxtell_train::rng::Rng;
use voxtell_train::sampler::{PromptKind, Sampler, SamplerConfig};

const ALPHA: &str = "Dataset001_Alpha";
const BETA: &str = "Dataset002_Beta";

const VOCAB: &str = r#"{
  "Dataset001_Alpha": {
    "liver": ["liver", "hepatic organ", "liver parenchyma"],
    "liver+tumor": ["liver including tumors"],
    "tumor": ["liver tumor", "hepatic lesion"],
    "spleen": ["spleen", "splenic organ"],
    "_negatives": ["brain", "femur"]
  },
  "Dataset002_Beta": {
    "kidney_left": ["left kidney", "kidney on the left"],
    "kidney_right": ["right kidney", "kidney on the right"],
    "cyst": ["kidney cyst", "renal cyst"]
  }
}"#;

fn write_case(
    root: &Path,
    id: &str,
    image: &Array3<f32>,
    labels: &Array3<u8>,
    affine: &Affine,
    ending: &str,
) {
    let opts = WriteOptions { overwrite: true };
    write_nifti(root.join("imagesTr").join(format!("{id}_0000{ending}")), image.view(), affine, opts)
        .unwrap();
    write_nifti(root.join("labelsTr").join(format!("{id}{ending}")), labels.view(), affine, opts).unwrap();
}

fn make_dirs(root: &Path, dataset_json: &str) {
    std::fs::create_dir_all(root.join("imagesTr")).unwrap();
    std::fs::create_dir_all(root.join("labelsTr")).unwrap();
    std::fs::write(root.join("dataset.json"), dataset_json).unwrap();
}

/// Alpha: RAS-aligned affine, `.nii.gz`; 3 cases of 24×26×22. Liver everywhere, the tumor
/// absent from case 2, the spleen absent from case 1. The image is zero outside a box so the
/// crop is not trivial.
fn make_alpha(base: &Path) -> PathBuf {
    let root = base.join(ALPHA);
    make_dirs(
        &root,
        r#"{"labels": {"background": 0, "liver": 1, "tumor": 2, "spleen": 3},
            "channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 3}"#,
    );
    let affine: Affine =
        [[1.2, 0.0, 0.0, -10.0], [0.0, 1.0, 0.0, 5.0], [0.0, 0.0, 1.5, 30.0], [0.0, 0.0, 0.0, 1.0]];
    for c in 0..3 {
        let shape = (24, 26, 22);
        let mut img = Array3::<f32>::zeros(shape);
        let mut lab = Array3::<u8>::zeros(shape);
        img.slice_mut(s![2..22, 3..24, 1..21])
            .indexed_iter_mut()
            .for_each(|((i, j, k), v)| *v = 40.0 + ((i * 3 + j * 5 + k * 7 + c) % 11) as f32);
        lab.slice_mut(s![6..14, 6..16, 5..15]).fill(1);
        img.slice_mut(s![6..14, 6..16, 5..15]).mapv_inplace(|v| v + 100.0);
        if c != 2 {
            lab.slice_mut(s![9..11, 9..11, 8..10]).fill(2);
        }
        if c != 1 {
            lab.slice_mut(s![15..19, 17..21, 12..18]).fill(3);
        }
        write_case(&root, &format!("alpha_{c:03}"), &img, &lab, &affine, ".nii.gz");
    }
    root
}

/// Beta's affine: voxel i → +S, j → −R (L), k → −A (P): orientation "SLP".
fn beta_affine() -> Affine {
    [[0.0, -1.5, 0.0, 40.0], [0.0, 0.0, -1.0, 30.0], [2.0, 0.0, 0.0, -10.0], [0.0, 0.0, 0.0, 1.0]]
}

/// Beta: a non-RAS affine, `.nii`; 3 cases of 30×20×24. The cyst only in case 0; case 2 has
/// only the left kidney (one positive, so negatives fill).
fn make_beta(base: &Path) -> PathBuf {
    let root = base.join(BETA);
    make_dirs(
        &root,
        r#"{"labels": {"background": 0, "kidney_left": 1, "kidney_right": 2, "cyst": 3},
            "channel_names": {"0": "MR"}, "file_ending": ".nii"}"#,
    );
    for c in 0..3 {
        let shape = (30, 20, 24);
        let img =
            Array3::<f32>::from_shape_fn(shape, |(i, j, k)| 1.0 + ((i * 7 + j * 3 + k + c) % 13) as f32);
        let mut lab = Array3::<u8>::zeros(shape);
        lab.slice_mut(s![4..12, 2..8, 3..10]).fill(1);
        if c != 2 {
            lab.slice_mut(s![16..26, 10..17, 12..20]).fill(2);
        }
        if c == 0 {
            lab.slice_mut(s![6..8, 3..5, 4..6]).fill(3);
        }
        write_case(&root, &format!("beta_{c:03}"), &img, &lab, &beta_affine(), ".nii");
    }
    root
}

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    datasets: Vec<Dataset>,
    vocab: Vocabulary,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let roots = [make_alpha(&base), make_beta(&base)];
    let datasets = open_datasets(&roots).unwrap();
    let vocab = Vocabulary::from_json_str(VOCAB, base.join("vocab.json")).unwrap();
    Fixture { _tmp: tmp, base, datasets, vocab }
}

fn small_config(augment: AugmentConfig) -> SamplerConfig {
    SamplerConfig { patch_size: [16, 16, 16], augment, ..SamplerConfig::default() }
}

#[test]
fn datasets_open_in_the_nnunet_layout() {
    let f = fixture();
    let a = &f.datasets[0];
    assert_eq!(a.name, ALPHA);
    assert_eq!(a.cases.len(), 3);
    assert_eq!(a.cases[0].id, "alpha_000");
    assert!(a.cases[0].label.ends_with("labelsTr/alpha_000.nii.gz"));
    assert_eq!(a.label_value("spleen"), Some(3));
    let b = &f.datasets[1];
    assert!(b.cases[2].image.ends_with("imagesTr/beta_002_0000.nii"));

    // Reading a non-RAS case: (S, A, R) layout, labels follow the image.
    let case = b.read_case(&b.cases[0]).unwrap();
    assert_eq!(case.image.data.shape(), &[30, 24, 20]); // S = i, A = k reversed, R = j reversed
    assert_eq!(case.labels.shape(), case.image.data.shape());
    // Voxel (i, j, k) = (5, 3, 4) is kidney_left in file order → (5, 23 − 4, 19 − 3) in SAR.
    assert_eq!(case.labels[[5, 19, 16]], 1);
    assert_eq!(case.labels[[5, 4, 3]], 0);
}

#[test]
fn dataset_and_vocabulary_errors_name_the_file_and_key() {
    let f = fixture();
    let alpha = &f.datasets[0];
    let err = |text: &str| Vocabulary::from_json_str(text, "/v/vocab.json").unwrap_err().to_string();
    let resolve_err = |text: &str| {
        Vocabulary::from_json_str(text, "/v/vocab.json")
            .unwrap()
            .resolve(ALPHA, &alpha.labels)
            .unwrap_err()
            .to_string()
    };

    let e = resolve_err(r#"{"Dataset001_Alpha": {"livr": ["liver"]}}"#);
    assert!(
        e.contains("/v/vocab.json") && e.contains("Dataset001_Alpha/livr") && e.contains("not a label"),
        "{e}"
    );
    let e = resolve_err(r#"{"Dataset001_Alpha": {"liver+kidney": ["x"]}}"#);
    assert!(e.contains("liver+kidney") && e.contains("\"kidney\""), "{e}");
    let e = err(r#"{"Dataset001_Alpha": {"liver": []}}"#);
    assert!(e.contains("Dataset001_Alpha/liver") && e.contains("empty"), "{e}");
    let e = err(r#"{"Dataset001_Alpha": {"liver": ["liver", 3]}}"#);
    assert!(e.contains("not a non-empty string"), "{e}");
    let e = err(r#"{"Dataset001_Alpha": {"_negative": ["brain"]}}"#);
    assert!(e.contains("_negative") && e.contains("reserved"), "{e}");
    let e = err(r#"{"Dataset001_Alpha": ["liver"]}"#);
    assert!(e.contains("Dataset001_Alpha"), "{e}");
    let e = err("{not json");
    assert!(e.contains("/v/vocab.json") && e.contains("invalid JSON"), "{e}");
    let e =
        Vocabulary::from_json_str(VOCAB, "/v/vocab.json").unwrap().resolve("Dataset009_Gamma", &alpha.labels);
    assert!(e.unwrap_err().to_string().contains("no vocabulary"));

    // The vocabulary parses synonyms, unions and negatives.
    let r = f.vocab.resolve(ALPHA, &alpha.labels).unwrap();
    let union = r.entries.iter().find(|e| e.key == "liver+tumor").unwrap();
    assert_eq!(union.values, vec![1, 2]);
    assert_eq!(r.negatives, vec!["brain".to_string(), "femur".to_string()]);
    let liver = &f.vocab.datasets[ALPHA].entries.iter().find(|e| e.key == "liver").unwrap().clone();
    assert_eq!(liver.default_prompt(), "liver");
    assert_eq!(liver.synonyms().len(), 2);

    // dataset.json: region lists are refused, naming the file and the label.
    let root = f.base.join("Dataset003_Regions");
    make_dirs(&root, r#"{"labels": {"background": 0, "whole": [1, 2], "core": 2}}"#);
    let e = Dataset::open(&root).unwrap_err().to_string();
    assert!(
        e.contains("Dataset003_Regions/dataset.json") && e.contains("\"whole\"") && e.contains("region"),
        "{e}"
    );
    // A missing label map names the image.
    let root = f.base.join("Dataset004_Missing");
    make_dirs(&root, r#"{"labels": {"background": 0, "a": 1}}"#);
    let img = Array3::<f32>::ones((4, 4, 4));
    write_nifti(
        root.join("imagesTr/m_001_0000.nii.gz"),
        img.view(),
        &voxtell_io::orientation::IDENTITY,
        WriteOptions::default(),
    )
    .unwrap();
    let e = Dataset::open(&root).unwrap_err().to_string();
    assert!(e.contains("m_001_0000.nii.gz") && e.contains("no label map"), "{e}");
    // A label map on another grid, or with undeclared values, is refused when read.
    let bad = Array3::<u8>::zeros((4, 4, 5));
    write_nifti(
        root.join("labelsTr/m_001.nii.gz"),
        bad.view(),
        &voxtell_io::orientation::IDENTITY,
        WriteOptions::default(),
    )
    .unwrap();
    let d = Dataset::open(&root).unwrap();
    let e = d.read_case(&d.cases[0]).unwrap_err().to_string();
    assert!(e.contains("labelsTr/m_001.nii.gz") && e.contains("shape"), "{e}");
    let mut shifted = voxtell_io::orientation::IDENTITY;
    shifted[0][3] = 2.0;
    let lab = Array3::<u8>::zeros((4, 4, 4));
    write_nifti(root.join("labelsTr/m_001.nii.gz"), lab.view(), &shifted, WriteOptions { overwrite: true })
        .unwrap();
    let e = d.read_case(&d.cases[0]).unwrap_err().to_string();
    assert!(e.contains("affine"), "{e}");
    let lab = Array3::<u8>::from_elem((4, 4, 4), 7);
    let id = voxtell_io::orientation::IDENTITY;
    write_nifti(root.join("labelsTr/m_001.nii.gz"), lab.view(), &id, WriteOptions { overwrite: true })
        .unwrap();
    let e = d.read_case(&d.cases[0]).unwrap_err().to_string();
    assert!(e.contains("label value 7 is not declared"), "{e}");
}

#[test]
fn cache_is_built_reused_and_rebuilt_when_stale() {
    let f = fixture();
    let cache_dir = f.base.join("cache");
    let opts = CacheOptions { max_foreground_coords: 50, ..CacheOptions::default() };
    let (cache, report) = Cache::build(&cache_dir, &f.datasets, &opts).unwrap();
    assert_eq!(report.built.len(), 6);
    assert_eq!(report.reused, 0);

    // Content: cropped and z-scored exactly as inference, labels on the same box.
    for (d, ds) in f.datasets.iter().enumerate() {
        for (c, files) in ds.cases.iter().enumerate() {
            let idx = &cache.datasets[d].cases[c];
            let raw = ds.read_case(files).unwrap();
            let bbox = nonzero_bbox(raw.image.data.view());
            assert_eq!(idx.bbox, bbox);
            let arrays = cache.read_case(idx).unwrap();
            assert_eq!(arrays.image, crop_and_normalize(raw.image.data.view(), &bbox));
            assert_eq!(arrays.labels, crop(raw.labels.view(), &bbox));
            for (&v, stats) in &idx.labels {
                let n = arrays.labels.iter().filter(|&&x| x == v).count() as u64;
                assert_eq!(stats.voxels, n);
                assert_eq!(stats.coords.len() as u64, n.min(50));
                assert!(
                    stats
                        .coords
                        .iter()
                        .all(|c| arrays.labels[[c[0] as usize, c[1] as usize, c[2] as usize]] == v)
                );
            }
            // A slab read is the matching part of the whole.
            let slab = cache.read_slab(idx, 3..7).unwrap();
            assert_eq!(slab.start, 3);
            assert_eq!(slab.image, arrays.image.slice(s![3..7, .., ..]));
            assert_eq!(slab.labels, arrays.labels.slice(s![3..7, .., ..]));
        }
    }
    let alpha = &cache.datasets[0];
    // RAS-aligned file (i, j, k) = (R, A, S): the (S, A, R) box is the file box reversed.
    assert_eq!(alpha.cases[0].bbox, [[1, 21], [3, 24], [2, 22]]);
    assert_eq!(alpha.cases[1].voxels(3), 0, "no spleen in case 1");
    assert_eq!(alpha.cases[2].voxels(2), 0, "no tumor in case 2");
    assert_eq!(alpha.cases[0].voxels(2), 8);

    // Fresh: everything reused. Cache::open sees the same.
    let (again, report) = Cache::build(&cache_dir, &f.datasets, &opts).unwrap();
    assert!(report.built.is_empty());
    assert_eq!(report.reused, 6);
    assert_eq!(again, cache);
    assert_eq!(Cache::open(&cache_dir, &[]).unwrap(), cache);
    assert_eq!(Cache::open(&cache_dir, &[BETA]).unwrap().datasets.len(), 1);

    // A changed source makes its case stale (new content, new mtime).
    let files = &f.datasets[0].cases[1];
    let vol = voxtell_io::read(&files.label).unwrap();
    let mut lab = vol.data.mapv(|v| v as u8);
    lab.slice_mut(s![15..19, 17..21, 12..18]).fill(3); // now case 1 has a spleen
    write_nifti(&files.label, lab.view(), &vol.affine, WriteOptions { overwrite: true }).unwrap();
    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options().write(true).open(&files.label).unwrap().set_modified(later).unwrap();
    let (rebuilt, report) = Cache::build(&cache_dir, &f.datasets, &opts).unwrap();
    assert_eq!(report.built, vec![(ALPHA.to_string(), "alpha_001".to_string())]);
    assert_eq!(report.reused, 5);
    assert_eq!(rebuilt.datasets[0].cases[1].voxels(3), 96);

    // A truncated data file is rebuilt too; other options (f16) rebuild everything.
    let victim = cache_dir.join(BETA).join(&rebuilt.datasets[1].cases[0].image_file);
    std::fs::write(&victim, b"short").unwrap();
    let (_, report) = Cache::build(&cache_dir, &f.datasets, &opts).unwrap();
    assert_eq!(report.built, vec![(BETA.to_string(), "beta_000".to_string())]);
    let f16 = CacheOptions { image_dtype: ImageDtype::F16, ..opts.clone() };
    let (half, report) = Cache::build(&cache_dir, &f.datasets, &f16).unwrap();
    assert_eq!(report.built.len(), 6);
    let h = half.read_case(&half.datasets[0].cases[0]).unwrap();
    let full = cache.read_case(&cache.datasets[0].cases[0]).unwrap();
    assert!(h.image.iter().zip(full.image.iter()).all(|(a, b)| (a - b).abs() <= 2e-3 * b.abs().max(1.0)));
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(cache_dir.join(ALPHA))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty());
}

fn build_cache(f: &Fixture) -> Arc<Cache> {
    let (cache, _) = Cache::build(f.base.join("cache"), &f.datasets, &CacheOptions::default()).unwrap();
    Arc::new(cache)
}

#[test]
fn sampler_ratios_and_negatives() {
    let f = fixture();
    let cache = build_cache(&f);
    let sampler = Sampler::new(cache.clone(), &f.vocab, small_config(AugmentConfig::none())).unwrap();
    assert_eq!(sampler.num_cases(), 6);
    let n = 3000;
    let (mut fg, mut default_hits, mut default_total) = (0usize, 0usize, 0usize);
    let mut rng = Rng::stream(11, &[]);
    for _ in 0..n {
        let sample = sampler.sample(&mut rng).unwrap();
        let info = &sample.info;
        let d = cache.datasets.iter().position(|d| d.name == info.dataset).unwrap();
        let case = cache.datasets[d].cases.iter().find(|c| c.id == info.case).unwrap();
        let vocab = sampler.vocabulary(d).unwrap();
        let present: Vec<_> =
            vocab.entries.iter().filter(|e| e.values.iter().any(|&v| case.voxels(v) > 0)).collect();
        assert_eq!(sample.prompts.len(), 3);
        assert_eq!(sample.targets.len(), 3);
        assert_eq!(sample.image.shape(), &[16, 16, 16]);
        let n_pos = info.prompts.iter().filter(|p| p.kind == PromptKind::Positive).count();
        // Two positives when there are; negatives fill; positives again when negatives run out
        // (Beta has no negative-only prompts, and its case 0 has every structure).
        let neg_pool = vocab.entries.len() - present.len() + vocab.negatives.len();
        let quota = present.len().min(2);
        let expected_pos = (quota + 3usize.saturating_sub(quota + neg_pool)).min(present.len());
        assert_eq!(n_pos, expected_pos, "{info:?}");
        let mut keys = BTreeSet::new();
        for ((p, text), target) in info.prompts.iter().zip(&sample.prompts).zip(&sample.targets) {
            assert_eq!(target.shape(), &[16, 16, 16]);
            match p.kind {
                PromptKind::Positive => {
                    let e = vocab.entries.iter().find(|e| Some(&e.key) == p.key.as_ref()).unwrap();
                    assert!(e.prompts.contains(text));
                    assert!(keys.insert(e.key.clone()), "distinct prompts");
                    if e.prompts.len() > 1 {
                        default_total += 1;
                        default_hits += usize::from(p.default_name);
                        assert_eq!(p.default_name, *text == e.prompts[0]);
                    }
                }
                PromptKind::AbsentLabel => {
                    // Annotated by this dataset, and truly absent from this case.
                    let e = vocab.entries.iter().find(|e| Some(&e.key) == p.key.as_ref()).unwrap();
                    assert!(e.values.iter().all(|&v| case.voxels(v) == 0), "{info:?}");
                    assert!(e.prompts.contains(text));
                    assert!(target.iter().all(|&v| v == 0));
                }
                PromptKind::NegativeOnly => {
                    assert!(vocab.negatives.contains(text));
                    assert!(target.iter().all(|&v| v == 0));
                }
            }
        }
        // Beta never gets Alpha's negatives.
        if info.dataset == BETA {
            assert!(!sample.prompts.iter().any(|p| p == "brain" || p == "femur" || p.contains("liver")));
        }
        if info.foreground {
            fg += 1;
            // The chosen voxel is at index P/2 (or nearer the low edge when clamped): one
            // positive target covers it, so some positive target is non-empty.
            assert!(
                info.prompts
                    .iter()
                    .zip(&sample.targets)
                    .any(|(p, t)| p.kind == PromptKind::Positive && t.iter().any(|&v| v == 1)),
                "{info:?}"
            );
        }
        // Without augmentation the patch is an exact crop of the cached case.
        let arrays = cache.read_case(case).unwrap();
        let lo: [i64; 3] = std::array::from_fn(|a| (info.centre[a] - 7.5) as i64);
        let expected = Array3::from_shape_fn((16, 16, 16), |(i, j, k)| {
            let x = [lo[0] + i as i64, lo[1] + j as i64, lo[2] + k as i64];
            let inside = (0..3).all(|a| x[a] >= 0 && (x[a] as usize) < case.shape[a]);
            if inside { arrays.image[[x[0] as usize, x[1] as usize, x[2] as usize]] } else { 0.0 }
        });
        assert_eq!(sample.image, expected);
    }
    let fg_frac = fg as f64 / n as f64;
    assert!((fg_frac - 0.85).abs() < 0.03, "foreground fraction {fg_frac}");
    let def_frac = default_hits as f64 / default_total as f64;
    assert!((def_frac - 0.25).abs() < 0.03, "default-name fraction {def_frac}");
}

#[test]
fn balanced_sampling_picks_datasets_evenly() {
    let f = fixture();
    let cfg = SamplerConfig { balance_datasets: true, ..small_config(AugmentConfig::none()) };
    let sampler = Sampler::new(build_cache(&f), &f.vocab, cfg).unwrap();
    let mut rng = Rng::new(21);
    let n = 600;
    let beta = (0..n).filter(|_| sampler.sample(&mut rng).unwrap().info.dataset == BETA).count();
    assert!((beta as f64 / n as f64 - 0.5).abs() < 0.07, "{beta}");
}

/// Fraction of samples of case `index` whose prompts include the entry `key` as `kind`.
fn key_fraction(sampler: &Sampler, index: usize, key: &str, kind: PromptKind, n: usize) -> f64 {
    let mut rng = Rng::new(5);
    let hits = (0..n)
        .filter(|_| {
            let s = sampler.sample_case(index, &mut rng).unwrap();
            s.info.prompts.iter().any(|p| p.kind == kind && p.key.as_deref() == Some(key))
        })
        .count();
    hits as f64 / n as f64
}

#[test]
fn key_weights_favour_an_entry_as_positive_and_as_negative() {
    let f = fixture();
    let cache = build_cache(&f);
    let refs = cache.case_refs();
    let index_of = |id: &str| {
        refs.iter().position(|&(d, c)| cache.datasets[d].cases[c].id == id).expect("case in the cache")
    };
    let (with_tumor, without_tumor) = (index_of("alpha_000"), index_of("alpha_002"));
    let plain = Sampler::new(cache.clone(), &f.vocab, small_config(AugmentConfig::none())).unwrap();
    let weights = [("tumor".to_string(), 6.0)].into_iter().collect();
    let weighted = Sampler::new(
        cache.clone(),
        &f.vocab,
        SamplerConfig { key_weights: weights, ..small_config(AugmentConfig::none()) },
    )
    .unwrap();
    let n = 3000;
    // alpha_000 has four entries present (liver, liver+tumor, tumor, spleen), two are drawn:
    // the tumor in half the samples, with weight 6 in 6/9 + 3/9 · 6/8 = 11/12 of them.
    let p = key_fraction(&plain, with_tumor, "tumor", PromptKind::Positive, n);
    assert!((p - 0.5).abs() < 0.03, "unweighted positive {p}");
    let p = key_fraction(&weighted, with_tumor, "tumor", PromptKind::Positive, n);
    assert!((p - 11.0 / 12.0).abs() < 0.02, "weighted positive {p}");
    // alpha_002 lacks the tumor: one negative out of tumor, "brain" and "femur": a third
    // unweighted, 6/8 with weight 6.
    let p = key_fraction(&plain, without_tumor, "tumor", PromptKind::AbsentLabel, n);
    assert!((p - 1.0 / 3.0).abs() < 0.03, "unweighted negative {p}");
    let p = key_fraction(&weighted, without_tumor, "tumor", PromptKind::AbsentLabel, n);
    assert!((p - 0.75).abs() < 0.03, "weighted negative {p}");
}

#[test]
fn bad_key_weights_are_errors_naming_the_key() {
    let f = fixture();
    let cache = build_cache(&f);
    let with = |key: &str, w: f64| SamplerConfig {
        key_weights: [(key.to_string(), w)].into_iter().collect(),
        ..small_config(AugmentConfig::none())
    };
    let e = Sampler::new(cache.clone(), &f.vocab, with("tumour", 2.0)).unwrap_err().to_string();
    assert!(e.contains("\"tumour\"") && e.contains("no vocabulary key"), "{e}");
    for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = Sampler::new(cache.clone(), &f.vocab, with("tumor", w)).unwrap_err().to_string();
        assert!(e.contains("\"tumor\"") && e.contains("positive number"), "{w}: {e}");
    }
}

#[test]
fn missing_vocabulary_for_a_dataset_is_an_error() {
    let f = fixture();
    let cache = build_cache(&f);
    let only_alpha =
        Vocabulary::from_json_str(r#"{"Dataset001_Alpha": {"liver": ["liver"]}}"#, "/v/only.json").unwrap();
    let e = Sampler::new(cache, &only_alpha, small_config(AugmentConfig::none())).unwrap_err().to_string();
    assert!(e.contains("/v/only.json") && e.contains(BETA) && e.contains("no vocabulary"), "{e}");
}

/// A 21³ source with a bright cube labelled 1 at [4, 9) × [6, 13) × [10, 16).
fn cube_source() -> (Array3<f32>, Array3<u16>) {
    let mut img = Array3::<f32>::zeros((21, 21, 21));
    let mut lab = Array3::<u16>::zeros((21, 21, 21));
    img.slice_mut(s![4..9, 6..13, 10..16]).fill(1.0);
    lab.slice_mut(s![4..9, 6..13, 10..16]).fill(1);
    (img, lab)
}

#[test]
fn spatial_augmentation_keeps_image_and_labels_aligned() {
    let (img, lab) = cube_source();
    let centre = [10.0, 10.0, 10.0];
    let patch = [21, 21, 21];

    // Rotation by 0 and scale 1 is the identity (also on the generic interpolation path).
    let zero = SpatialParams { angles: [0.0; 3], scale: 1.0, mirror: [false; 3] };
    assert_eq!(sample_image(img.view(), centre, patch, &zero), img);
    assert_eq!(sample_labels(lab.view(), centre, patch, &zero), lab);

    // Mirroring axes 0 and 1: the cube moves to the mirrored place and stays a cube, in both.
    let m = SpatialParams { mirror: [true, true, false], ..zero };
    let mi = sample_image(img.view(), centre, patch, &m);
    let ml = sample_labels(lab.view(), centre, patch, &m);
    let mut expected = Array3::<u16>::zeros((21, 21, 21));
    expected.slice_mut(s![12..17, 8..15, 10..16]).fill(1);
    assert_eq!(ml, expected);
    assert_eq!(mi, expected.mapv(f32::from));

    // Rotation by 90° about axis 0: output offset d reads source offset (d0, −d2, d1), so a
    // source voxel at offset (a, b, e) appears at output offset (a, e, −b).
    let mut point = Array3::<f32>::zeros((21, 21, 21));
    point[[10 + 2, 10 + 3, 10 - 4]] = 1.0;
    let rot = SpatialParams { angles: [std::f64::consts::FRAC_PI_2, 0.0, 0.0], ..zero };
    let out = sample_image(point.view(), centre, patch, &rot);
    assert!((out[[10 + 2, 10 - 4, 10 - 3]] - 1.0).abs() < 1e-6, "{}", out[[12, 6, 7]]);
    assert!((out.sum() - 1.0).abs() < 1e-5);
    let out_l = sample_labels(point.mapv(|v| v as u16).view(), centre, patch, &rot);
    assert_eq!(out_l[[12, 6, 7]], 1);
    assert_eq!(out_l.sum(), 1);
    // The whole cube rotates the same way in image and labels.
    let ri = sample_image(img.view(), centre, patch, &rot);
    let rl = sample_labels(lab.view(), centre, patch, &rot);
    assert!(rl.iter().zip(ri.iter()).all(|(&l, &v)| (f32::from(l) - v).abs() < 1e-6));
    assert_eq!(rl.sum(), lab.sum());

    // Random rotations and scalings: labels land where the image is bright.
    let mut rng = Rng::new(3);
    for _ in 0..20 {
        let deg = std::f64::consts::PI / 180.0;
        let p = SpatialParams {
            angles: std::array::from_fn(|_| rng.range(-30.0, 30.0) * deg),
            scale: rng.range(0.7, 1.4),
            mirror: [rng.bernoulli(0.5), rng.bernoulli(0.5), false],
        };
        let i = sample_image(img.view(), centre, patch, &p);
        let l = sample_labels(lab.view(), centre, patch, &p);
        let inside: Vec<f32> = i.iter().zip(l.iter()).filter(|(_, l)| **l == 1).map(|(v, _)| *v).collect();
        let outside: Vec<f32> = i.iter().zip(l.iter()).filter(|(_, l)| **l == 0).map(|(v, _)| *v).collect();
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        assert!(!inside.is_empty());
        assert!(mean(&inside) > 0.75 && mean(&outside) < 0.05, "{} {}", mean(&inside), mean(&outside));
    }
}

#[test]
fn sampled_patches_with_full_augmentation_are_aligned() {
    // Through the sampler: the liver region of Alpha is brighter (+100 before z-scoring); with
    // spatial augmentation only, the liver target lies on the bright voxels.
    let f = fixture();
    let cache = build_cache(&f);
    let spatial_only =
        AugmentConfig { p_rotation: 1.0, p_scaling: 1.0, p_mirror: 0.5, ..AugmentConfig::none() };
    let sampler = Sampler::new(cache, &f.vocab, small_config(spatial_only)).unwrap();
    let mut rng = Rng::new(8);
    let mut checked = 0;
    for _ in 0..200 {
        let s = sampler.sample_case(0, &mut rng).unwrap();
        for (p, t) in s.info.prompts.iter().zip(&s.targets) {
            if p.key.as_deref() == Some("liver") && t.iter().any(|&v| v == 1) {
                let inside: Vec<f32> =
                    s.image.iter().zip(t.iter()).filter(|(_, m)| **m == 1).map(|(v, _)| *v).collect();
                let mean = inside.iter().sum::<f32>() / inside.len() as f32;
                assert!(mean > 1.0, "liver voxels should be bright (z > 1), got {mean}");
                checked += 1;
            }
        }
    }
    assert!(checked > 20);
    // Default augmentation runs and keeps the image finite.
    let sampler = Sampler::new(build_cache(&f), &f.vocab, small_config(AugmentConfig::default())).unwrap();
    let mut rng = Rng::new(9);
    for _ in 0..100 {
        let s = sampler.sample(&mut rng).unwrap();
        assert!(s.image.iter().all(|v| v.is_finite()));
    }
}

fn collect(loader: Loader) -> Vec<voxtell_train::loader::Batch> {
    loader.map(|b| b.unwrap()).collect()
}

#[test]
fn loader_is_deterministic_across_worker_counts() {
    let f = fixture();
    let sampler =
        Arc::new(Sampler::new(build_cache(&f), &f.vocab, small_config(AugmentConfig::default())).unwrap());
    let config = |seed: u64, workers: usize| LoaderConfig {
        batch_size: 2,
        seed,
        iterations_per_epoch: 4,
        start_epoch: 1,
        start_iteration: 1,
        end_epoch: Some(3),
        workers,
        capacity: if workers == 1 { 1 } else { 0 },
    };
    let one = collect(Loader::new(sampler.clone(), config(5, 1)).unwrap());
    let three = collect(Loader::new(sampler.clone(), config(5, 3)).unwrap());
    assert_eq!(one.len(), 7);
    assert_eq!(one, three);
    let positions: Vec<(u64, u64)> = one.iter().map(|b| (b.epoch, b.iteration)).collect();
    assert_eq!(positions, vec![(1, 1), (1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]);
    let b = &one[0];
    assert_eq!(b.image.len(), 2 * 16 * 16 * 16);
    assert_eq!(b.targets.len(), 2 * 3 * 16 * 16 * 16);
    assert_eq!((b.batch_size, b.n_prompts, b.patch), (2, 3, [16, 16, 16]));
    assert_eq!(b.prompts.len(), 2);
    assert!(b.prompts.iter().all(|p| p.len() == 3));
    // The same batch built synchronously, with 1 or 3 rayon threads inside the augmentation.
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        assert_eq!(pool.install(|| make_batch(&sampler, 5, 2, 1, 2)).unwrap(), one[4]);
    }
    // Another seed gives other batches.
    let other = collect(Loader::new(sampler, config(6, 2)).unwrap());
    assert_eq!(other.len(), 7);
    assert!(other.iter().zip(&one).all(|(a, b)| a.image != b.image));
}

#[test]
fn loader_shuts_down_cleanly_and_reports_errors() {
    let f = fixture();
    let cache = build_cache(&f);
    let sampler =
        Arc::new(Sampler::new(cache.clone(), &f.vocab, small_config(AugmentConfig::none())).unwrap());
    // Unbounded loaders dropped after a few batches, or before any: no hang.
    let mut loader =
        Loader::new(sampler.clone(), LoaderConfig { workers: 2, capacity: 3, ..Default::default() }).unwrap();
    for _ in 0..3 {
        assert!(loader.next().unwrap().is_ok());
    }
    assert_eq!(loader.position(), (0, 3));
    drop(loader);
    drop(Loader::new(sampler.clone(), LoaderConfig { workers: 3, ..Default::default() }).unwrap());

    // A worker error is delivered (in order), then the loader ends.
    for ds in &cache.datasets {
        for c in &ds.cases {
            std::fs::remove_file(ds.dir.join(&c.image_file)).unwrap();
        }
    }
    let mut loader = Loader::new(sampler, LoaderConfig { workers: 2, ..Default::default() }).unwrap();
    let err = loader.next().unwrap().unwrap_err();
    assert!(matches!(err, TrainError::File { .. }), "{err}");
    assert!(err.to_string().contains("_image.f32"), "{err}");
    assert!(loader.next().is_none());
}
