//! Phantom datasets (`voxtell-phantom`) as the training loader reads them: non-RAS storage
//! reads back as the same anatomy, `dataset.json` and the vocabulary resolve against the
//! dataset's labels.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;

use ndarray::{Array3, ArrayView3};
use voxtell_phantom::{
    self as phantom, KIDNEY_LEFT, KIDNEY_RIGHT, LABELS, LIVER, LIVER_LESION, LUNG_LEFT, LUNG_RIGHT,
    PhantomOptions, SPLEEN, VERTEBRAE, generate_case, world,
};
use voxtell_train::data::{Dataset, Vocabulary};

/// Two cases of the default distribution (the demo model's training data; coarse grids keep
/// the tests fast).
fn two(seed: u64) -> PhantomOptions {
    PhantomOptions { cases: 2, seed, ..PhantomOptions::default() }
}

/// Centroid of `label` along array axis `axis`.
fn index_centroid(labels: &Array3<u16>, label: u8, axis: usize) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (idx, &l) in labels.indexed_iter() {
        if l == u16::from(label) {
            sum += [idx.0, idx.1, idx.2][axis] as f64;
            n += 1;
        }
    }
    assert!(n > 0, "label {label} missing");
    sum / n as f64
}

#[test]
fn non_ras_storage_reads_back_as_the_same_anatomy() {
    let tmp = tempfile::tempdir().unwrap();
    let ras_opts = PhantomOptions { non_ras_fraction: 0.0, ..two(5) };
    let odd_opts = PhantomOptions { non_ras_fraction: 1.0, ..ras_opts.clone() };
    let ras =
        Dataset::open(phantom::write_dataset(tmp.path(), "Dataset901_Ras", &ras_opts).unwrap()).unwrap();
    let odd =
        Dataset::open(phantom::write_dataset(tmp.path(), "Dataset902_Odd", &odd_opts).unwrap()).unwrap();
    for i in 0..2 {
        let generated = generate_case(&odd_opts, i);
        assert_ne!(generated.axcodes, "RAS");
        assert_eq!(generate_case(&ras_opts, i).axcodes, "RAS");
        // The files hold exactly the generated arrays, in the storage order.
        let stored = voxtell_io::read(&odd.cases[i].image).unwrap();
        assert_eq!(stored.axcodes(), generated.axcodes);
        assert_eq!(stored.data, generated.image);
        let stored_labels = voxtell_io::read(&odd.cases[i].label).unwrap();
        assert_eq!(stored_labels.data, generated.labels.mapv(f32::from));
        for (a, b) in stored.affine.iter().flatten().zip(generated.affine.iter().flatten()) {
            assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{:?} vs {:?}", stored.affine, generated.affine);
        }
        // Reoriented to (S, A, R), both storage orders give the same arrays and geometry.
        let a = ras.read_case(&ras.cases[i]).unwrap();
        let b = odd.read_case(&odd.cases[i]).unwrap();
        assert_eq!(a.image.data, b.image.data, "case {i}: {} differs from RAS", generated.axcodes);
        assert_eq!(a.labels, b.labels);
        let (ga, gb) = (&a.image.geometry.reoriented_affine, &b.image.geometry.reoriented_affine);
        for (x, y) in ga.iter().flatten().zip(gb.iter().flatten()) {
            assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{ga:?} vs {gb:?}");
        }
        // Array axis 2 of the (S, A, R) layout grows toward the patient's right: the right
        // kidney and the liver have the larger index, and the reoriented affine maps that axis to
        // +x (RAS 'R').
        let r = |l| index_centroid(&b.labels, l, 2);
        assert!(r(KIDNEY_RIGHT) > r(KIDNEY_LEFT) + 5.0);
        assert!(r(LIVER) > r(SPLEEN) + 5.0);
        assert!(r(LUNG_RIGHT) > r(LUNG_LEFT) + 5.0);
        assert!(gb[0][0] > 0.0 && gb[1][1] > 0.0 && gb[2][2] > 0.0);
        let world_x =
            |l| world(gb, [r(l), index_centroid(&b.labels, l, 1), index_centroid(&b.labels, l, 0)])[0];
        assert!(world_x(KIDNEY_LEFT) < world_x(VERTEBRAE) && world_x(VERTEBRAE) < world_x(KIDNEY_RIGHT));
        // And in the stored (non-RAS) file, world coordinates through its own affine agree.
        let kl = generated.centroid_world(KIDNEY_LEFT).unwrap();
        assert!((kl[0] - world_x(KIDNEY_LEFT)).abs() < 1e-6 * kl[0].abs().max(1.0) + 1e-3);
    }
}

#[test]
fn dataset_json_and_vocabulary_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "Dataset903_Phantom";
    let o = two(7);
    let root = phantom::write_dataset(tmp.path(), name, &o).unwrap();
    assert_eq!(root, tmp.path().join(name));
    let ds = Dataset::open(&root).unwrap();
    assert_eq!(ds.name, name);
    let ids: Vec<&str> = ds.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["Dataset903_Phantom_000", "Dataset903_Phantom_001"]);
    let expected: Vec<(String, u16)> = LABELS.iter().map(|&(n, v)| (n.to_string(), u16::from(v))).collect();
    assert_eq!(ds.labels, expected.into_iter().collect());
    ds.read_case(&ds.cases[1]).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(json["numTraining"], 2);
    assert_eq!(json["file_ending"], ".nii.gz");
    assert_eq!(json["channel_names"]["0"], "CT");
    let stored: PhantomOptions = serde_json::from_value(json["phantom"]["options"].clone()).unwrap();
    assert_eq!(stored, o);
    // The dataset is not overwritten.
    let err = phantom::write_dataset(tmp.path(), name, &o).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");

    let vocab =
        Vocabulary::from_json_str(&phantom::vocabulary_json(name).to_string(), "vocabulary.json").unwrap();
    let resolved = vocab.resolve(name, &ds.labels).unwrap();
    let liver = resolved.entries.iter().find(|e| e.prompts[0] == "liver").unwrap();
    assert_eq!(liver.values, [u16::from(LIVER), u16::from(LIVER_LESION)]);
    let left = resolved.entries.iter().find(|e| e.key == "kidney_left").unwrap();
    for p in ["left kidney", "kidney on the left side", "left renal organ"] {
        assert!(left.prompts.iter().any(|q| q == p), "{p}");
    }
    let covered: BTreeSet<u16> = resolved.entries.iter().flat_map(|e| e.values.clone()).collect();
    assert_eq!(covered, (1..=10).collect());
    let mut all_prompts = BTreeSet::new();
    for e in &resolved.entries {
        assert!(e.prompts.len() >= 4, "{}: default name and 3+ synonyms", e.key);
        for p in &e.prompts {
            assert!(all_prompts.insert(p.to_lowercase()), "prompt {p:?} used twice");
        }
    }
    assert!(!resolved.negatives.is_empty());
    assert!(resolved.negatives.iter().all(|n| !all_prompts.contains(&n.to_lowercase())));

    // Held-out paraphrases: known keys, never a vocabulary prompt, every entry covered.
    let paraphrases = phantom::paraphrases();
    let keys: BTreeSet<&str> = resolved.entries.iter().map(|e| e.key.as_str()).collect();
    let mut seen = BTreeSet::new();
    for (key, p) in &paraphrases {
        assert!(keys.contains(key.as_str()), "unknown key {key}");
        assert!(!all_prompts.contains(&p.trim().to_lowercase()), "paraphrase {p:?} is a vocabulary prompt");
        assert!(seen.insert(p.to_lowercase()), "paraphrase {p:?} twice");
    }
    for key in &keys {
        assert!(paraphrases.iter().filter(|(k, _)| k == key).count() >= 2, "{key}: too few paraphrases");
    }
}

/// Masks of every label in `labels_sar`.
fn masks(labels_sar: ArrayView3<'_, u16>) -> (Vec<Array3<u8>>, Vec<String>) {
    let mut out = Vec::new();
    let mut names = Vec::new();
    for &(name, v) in &LABELS[1..] {
        out.push(labels_sar.mapv(|l| u8::from(l == u16::from(v))));
        names.push(name.to_string());
    }
    (out, names)
}

#[test]
#[ignore = "writes /tmp/phantom_preview.png to look at"]
fn preview_png() {
    let tmp = tempfile::tempdir().unwrap();
    let index: usize = std::env::var("PHANTOM_CASE").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let o = PhantomOptions { cases: index + 1, ..PhantomOptions::default() };
    let root = phantom::write_dataset(tmp.path(), "Dataset900_Phantom", &o).unwrap();
    let ds = Dataset::open(&root).unwrap();
    let case = &ds.cases[index];
    let image = voxtell_io::read(&case.image).unwrap();
    println!("{}: {}", case.id, image.summary());
    let ras = image.to_ras().unwrap();
    let labels = voxtell_io::read(&case.label).unwrap().to_ras().unwrap().data.mapv(|v| v as u16);
    let (m, names) = masks(labels.view());
    let views: Vec<ArrayView3<'_, u8>> = m.iter().map(|a| a.view()).collect();
    let preview =
        voxtell_infer::preview::render(ras.data.view(), &views, &names, ras.geometry.spacing()).unwrap();
    preview.write_png(Path::new("/tmp/phantom_preview.png"), true).unwrap();
    // Optional extra looks at other levels: masks cut to a thin slab around each level.
    if let Ok(levels) = std::env::var("PHANTOM_LEVELS") {
        let n = ras.data.shape()[0];
        for level in levels.split(',').filter_map(|v| v.parse::<f64>().ok()) {
            let s0 = ((n - 1) as f64 * level).round() as usize;
            let slab: Vec<Array3<u8>> = m
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    for ((s, _, _), v) in a.indexed_iter_mut() {
                        if s.abs_diff(s0) > 1 {
                            *v = 0;
                        }
                    }
                    a
                })
                .collect();
            let views: Vec<ArrayView3<'_, u8>> = slab.iter().map(|a| a.view()).collect();
            let p = voxtell_infer::preview::render(ras.data.view(), &views, &names, ras.geometry.spacing())
                .unwrap();
            p.write_png(Path::new(&format!("/tmp/phantom_preview_{level}.png")), true).unwrap();
        }
    }
}
