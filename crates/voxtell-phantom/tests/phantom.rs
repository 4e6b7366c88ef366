//! The torso-CT phantom generator: determinism, anatomical sanity (left/right in RAS+ world
//! coordinates), option checks and dataset files that do not depend on the thread count.
//! (`voxtell-train`'s `tests/phantom.rs` reads the datasets back through its loader.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use ndarray::Array3;
use voxtell_phantom::{
    self as phantom, AORTA, KIDNEY_LEFT, KIDNEY_RIGHT, LABELS, LIVER, LIVER_LESION, LUNG_LEFT, LUNG_RIGHT,
    PhantomCase, PhantomOptions, SPLEEN, URINARY_BLADDER, VERTEBRAE, generate_case, world,
};

/// Coarse grids keep the tests fast (about 60 × 45 × 70 voxels); lesions, noise and contrast of
/// [`PhantomOptions::challenging`] (the tests were written for it; they keep testing it).
fn small(seed: u64) -> PhantomOptions {
    PhantomOptions {
        cases: 3,
        inplane_spacing_mm: [4.0, 5.0],
        slice_spacing_mm: [4.5, 5.5],
        ..PhantomOptions::challenging(seed)
    }
}

/// World-coordinate extremes (min, max) of a label along world axis `axis`.
fn world_extent(case: &PhantomCase, label: u8, axis: usize) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for ((i, j, k), &l) in case.labels.indexed_iter() {
        if l == label {
            let w = world(&case.affine, [i as f64, j as f64, k as f64])[axis];
            lo = lo.min(w);
            hi = hi.max(w);
        }
    }
    (lo, hi)
}

/// The case with every liver lesion relabelled as liver.
fn without_lesion_label(labels: &Array3<u8>) -> Array3<u8> {
    labels.mapv(|l| if l == LIVER_LESION { LIVER } else { l })
}

#[test]
fn cases_depend_only_on_seed_and_index() {
    let o = small(11);
    let t = Instant::now();
    let a = generate_case(&o, 1);
    let elapsed = t.elapsed();
    assert_eq!(a, generate_case(&o, 1));
    // The number of cases to write is not an input of a case.
    assert_eq!(a, generate_case(&PhantomOptions { cases: 50, ..o.clone() }, 1));
    assert_ne!(a, generate_case(&small(12), 1));
    assert_ne!(a, generate_case(&o, 2));
    assert_eq!(a.image.shape(), a.labels.shape());
    assert!(a.image.iter().all(|v| v.fract() == 0.0 && (-1024.0..=3071.0).contains(v)));
    // Sub-streams: without lesions the anatomy is unchanged, only the lesions are gone.
    let with = (0..6).map(|i| generate_case(&o, i)).find(|c| c.liver_lesions > 0).unwrap();
    let without = generate_case(&PhantomOptions { include_lesions: false, ..o.clone() }, with.index);
    assert_eq!(without.liver_lesions, 0);
    assert!(!without.labels.iter().any(|&l| l == LIVER_LESION));
    assert!(with.labels.iter().any(|&l| l == LIVER_LESION));
    assert_eq!(without_lesion_label(&with.labels), without.labels);
    assert_eq!(with.affine, without.affine);
    println!("one small case: {:?} voxels in {elapsed:?}", a.image.shape());
}

/// Anatomical sanity of one case, in world (RAS+) coordinates through the case's affine.
fn check_anatomy(c: &PhantomCase) -> Result<(), String> {
    let ctx = format!("case {} ({})", c.index, c.axcodes);
    let centre = |l: u8| c.centroid_world(l).ok_or_else(|| format!("{ctx}: label {l} missing"));
    let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(format!("{ctx}: {what}")) };
    for (label, lo, hi) in [
        (LIVER, 350.0, 2600.0),
        (SPLEEN, 25.0, 450.0),
        (KIDNEY_LEFT, 30.0, 320.0),
        (KIDNEY_RIGHT, 30.0, 320.0),
        (VERTEBRAE, 60.0, 600.0),
        (AORTA, 15.0, 200.0),
        (URINARY_BLADDER, 40.0, 500.0),
        (LUNG_LEFT, 80.0, 1500.0),
        (LUNG_RIGHT, 80.0, 1500.0),
    ] {
        let v = c.volume_ml(label);
        check((lo..=hi).contains(&v), format!("label {label} has {v:.1} ml, expected {lo}..{hi}"))?;
    }
    // RAS+: x grows toward the patient's right. The spine marks the midline.
    let mid = centre(VERTEBRAE)?;
    let liver = centre(LIVER)?;
    let spleen = centre(SPLEEN)?;
    let (kl, kr) = (centre(KIDNEY_LEFT)?, centre(KIDNEY_RIGHT)?);
    let (ll, lr) = (centre(LUNG_LEFT)?, centre(LUNG_RIGHT)?);
    let aorta = centre(AORTA)?;
    let bladder = centre(URINARY_BLADDER)?;
    check(liver[0] > mid[0] + 15.0, format!("liver not on the patient's right: {liver:?} vs spine {mid:?}"))?;
    check(spleen[0] < mid[0] - 30.0, format!("spleen not on the patient's left: {spleen:?} vs {mid:?}"))?;
    check(kl[0] < mid[0] - 30.0 && kr[0] > mid[0] + 30.0, format!("kidneys {kl:?} {kr:?} vs {mid:?}"))?;
    check(ll[0] < mid[0] - 20.0 && lr[0] > mid[0] + 20.0, format!("lungs {ll:?} {lr:?} vs {mid:?}"))?;
    check(aorta[0] < mid[0] && aorta[1] > mid[1], format!("aorta {aorta:?} not anterior-left of {mid:?}"))?;
    check(bladder[1] > mid[1], format!("bladder {bladder:?} not anterior of {mid:?}"))?;
    // Lungs above the liver's top, kidneys not above the liver, the bladder lowest.
    let liver_top = world_extent(c, LIVER, 2).1;
    check(
        ll[2] > liver_top && lr[2] > liver_top,
        format!("lungs {ll:?} {lr:?} below liver top {liver_top:.0}"),
    )?;
    check(kl[2] < liver[2] + 20.0 && kr[2] < liver[2] + 20.0, format!("kidneys {kl:?} {kr:?} above liver"))?;
    let (bladder_bottom, bladder_top) = world_extent(c, URINARY_BLADDER, 2);
    check(bladder_top < kl[2].min(kr[2]) - 40.0, format!("bladder top {bladder_top:.0} not inferior"))?;
    check(bladder_bottom > world_extent(c, 0, 2).0, "bladder cut off by the field of view".into())?;
    // Liver and spleen lie anterior and lateral of the kidneys, never behind them (in the
    // retroperitoneum), and the bladder sits in perivesical fat.
    let sar = voxtell_io::Volume::new(c.labels.mapv(f32::from), c.affine).to_ras().unwrap().data;
    let behind = organ_behind_kidney(&sar);
    check(behind == 0, format!("{behind} liver or spleen voxels posterior of a kidney"))?;
    let fat = bladder_fat_fraction(c);
    check(fat >= 0.7, format!("only {:.0}% of the bladder's unlabelled neighbours are fat", 100.0 * fat))?;
    // Lesions lie inside the liver: what borders them is liver.
    let lesion_voxels = c.labels.iter().filter(|&&l| l == LIVER_LESION).count();
    check((lesion_voxels > 0) == (c.liver_lesions > 0), format!("{lesion_voxels} lesion voxels"))?;
    if lesion_voxels > 0 {
        let (liver_n, other) = lesion_neighbours(&c.labels);
        check(
            liver_n as f64 >= 0.9 * (liver_n + other) as f64,
            format!("lesion borders {liver_n} liver, {other} other voxels"),
        )?;
    }
    Ok(())
}

#[test]
fn anatomy_is_plausible_and_left_right_correct() {
    let o = small(3);
    let mut non_ras = 0;
    for index in 0..6 {
        let c = generate_case(&o, index);
        non_ras += usize::from(c.axcodes != "RAS");
        check_anatomy(&c).unwrap();
    }
    assert!(non_ras > 0, "no non-RAS case among 6");
}

#[test]
#[ignore = "checks many fine-grid and default phantoms (slow)"]
fn many_cases_are_plausible() {
    let n: usize = std::env::var("PHANTOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    for o in [PhantomOptions::challenging(1234), PhantomOptions { seed: 1234, ..PhantomOptions::default() }] {
        let failures: Vec<String> =
            (0..n).filter_map(|i| check_anatomy(&generate_case(&o, i)).err()).collect();
        for f in &failures {
            println!("{f}");
        }
        assert!(failures.is_empty(), "{} of {n} cases failed with {o:?}", failures.len());
    }
}

#[test]
fn defaults_are_the_demo_models_training_settings() {
    // assets/demo/phantom.json names every option: the demo's training data does not depend on
    // the defaults. The defaults are those settings, the number of cases and the seed aside.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/phantom.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let demo: PhantomOptions = serde_json::from_str(&text).unwrap();
    let named: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    let all = serde_json::to_value(PhantomOptions::default()).unwrap();
    let fields: BTreeSet<&String> = all.as_object().unwrap().keys().collect();
    assert_eq!(named.keys().collect::<BTreeSet<_>>(), fields, "{} names every option", path.display());
    assert_eq!(PhantomOptions { cases: demo.cases, seed: demo.seed, ..PhantomOptions::default() }, demo);
}

/// The six face neighbours of voxel `(i, j, k)` in an array of shape `dim`: `None` for those
/// outside it.
fn face_neighbours(dim: (usize, usize, usize), (i, j, k): (usize, usize, usize)) -> [Option<[usize; 3]>; 6] {
    let step = |x: usize, d: i64, n: usize| {
        let y = x as i64 + d;
        (0..n as i64).contains(&y).then_some(y as usize)
    };
    [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
        .map(|(di, dj, dk)| Some([step(i, di, dim.0)?, step(j, dj, dim.1)?, step(k, dk, dim.2)?]))
}

/// Face neighbours of lesion voxels that are not lesion: (liver, anything else, the volume's
/// outside included).
fn lesion_neighbours(labels: &Array3<u8>) -> (usize, usize) {
    let (mut liver, mut other) = (0, 0);
    for (idx, &l) in labels.indexed_iter() {
        if l != LIVER_LESION {
            continue;
        }
        for n in face_neighbours(labels.dim(), idx) {
            match n.map(|n| labels[n]) {
                Some(LIVER_LESION) => {}
                Some(LIVER) => liver += 1,
                _ => other += 1,
            }
        }
    }
    (liver, other)
}

/// Liver or spleen voxels with a kidney voxel anterior of them in the same (S, R) column of an
/// (S, A, R) label array.
fn organ_behind_kidney(sar: &Array3<f32>) -> usize {
    let (ns, na, nr) = sar.dim();
    let is = |v: f32, l: u8| v == f32::from(l);
    let mut count = 0;
    for s in 0..ns {
        for r in 0..nr {
            // Scan from anterior to posterior: once a kidney is passed, no organ may follow.
            let mut kidney_seen = false;
            for a in (0..na).rev() {
                let v = sar[[s, a, r]];
                kidney_seen |= is(v, KIDNEY_LEFT) || is(v, KIDNEY_RIGHT);
                count += usize::from(kidney_seen && (is(v, LIVER) || is(v, SPLEEN)));
            }
        }
    }
    count
}

/// Fraction of the unlabelled face neighbours of the bladder whose intensity is fat-like
/// (below -30 HU, noise and partial volume included).
fn bladder_fat_fraction(c: &PhantomCase) -> f64 {
    let (mut fat, mut all) = (0usize, 0usize);
    for (idx, &l) in c.labels.indexed_iter() {
        if l != URINARY_BLADDER {
            continue;
        }
        for n in face_neighbours(c.labels.dim(), idx).into_iter().flatten() {
            if c.labels[n] == 0 {
                all += 1;
                fat += usize::from(c.image[n] < -30.0);
            }
        }
    }
    fat as f64 / all.max(1) as f64
}

#[test]
fn written_files_do_not_depend_on_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let o = PhantomOptions { cases: 3, ..small(9) };
    let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
    let one = pool(1).install(|| phantom::write_dataset(tmp.path().join("one"), "D", &o)).unwrap();
    let three = pool(3).install(|| phantom::write_dataset(tmp.path().join("three"), "D", &o)).unwrap();
    let mut files = 0;
    for sub in ["imagesTr", "labelsTr", "."] {
        for entry in std::fs::read_dir(one.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let other = three.join(sub).join(path.file_name().unwrap());
                assert!(std::fs::read(&path).unwrap() == std::fs::read(&other).unwrap(), "{path:?} differs");
                files += 1;
            }
        }
    }
    assert_eq!(files, 7);
}

#[test]
fn lesion_radius_sets_the_lesion_size_and_nothing_else() {
    // The same draws with other radii: the anatomy is unchanged, lesions grow with the range.
    let base = PhantomOptions { lesion_case_fraction: 1.0, ..small(4) };
    let big = PhantomOptions { lesion_radius_mm: [25.0, 30.0], ..base.clone() };
    let small_lesions = PhantomOptions { lesion_radius_mm: [5.0, 6.0], ..base.clone() };
    let count = |c: &PhantomCase| c.labels.iter().filter(|&&l| l == LIVER_LESION).count();
    let (mut sum_small, mut sum_big) = (0, 0);
    for i in 0..3 {
        let (a, b) = (phantom::generate_case(&small_lesions, i), phantom::generate_case(&big, i));
        assert_eq!(without_lesion_label(&a.labels), without_lesion_label(&b.labels), "case {i}");
        sum_small += count(&a);
        sum_big += count(&b);
    }
    assert!(sum_big > 5 * sum_small.max(1), "{sum_small} vs {sum_big} lesion voxels");
}

#[test]
fn lesion_contrast_and_noise_set_what_they_say_and_nothing_else() {
    // Noise-free cases: the lesions' interior is the liver's HU minus the contrast drawn from the
    // range; labels do not change with either option.
    let base = PhantomOptions { lesion_case_fraction: 1.0, noise_sd_hu: [0.0, 0.0], ..small(6) };
    let median = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    for contrast in [20.0, 80.0] {
        let o = PhantomOptions { lesion_contrast_hu: [contrast, contrast], ..base.clone() };
        let case = phantom::generate_case(&o, 0);
        assert_eq!(case.labels, phantom::generate_case(&base, 0).labels);
        // Interior voxels only (all six neighbours of the same label), away from partial volume.
        let interior = |label: u8| {
            let mut hu = Vec::new();
            for (idx, &l) in case.labels.indexed_iter() {
                if l == label
                    && face_neighbours(case.labels.dim(), idx)
                        .iter()
                        .all(|n| n.is_some_and(|n| case.labels[n] == label))
                {
                    hu.push(case.image[idx]);
                }
            }
            hu
        };
        let (mut liver, mut lesion) = (interior(LIVER), interior(LIVER_LESION));
        assert!(liver.len() > 100 && lesion.len() > 10, "{} {}", liver.len(), lesion.len());
        let drop = median(&mut liver) - median(&mut lesion);
        assert!((drop - contrast as f32).abs() < 6.0, "contrast {contrast}: liver − lesion {drop} HU");
    }
    // Noise: the difference to the noise-free case has the standard deviation asked for.
    let quiet = phantom::generate_case(&base, 0);
    for sd in [5.0, 20.0] {
        let case = phantom::generate_case(&PhantomOptions { noise_sd_hu: [sd, sd], ..base.clone() }, 0);
        assert_eq!(case.labels, quiet.labels);
        let diff: Vec<f64> = ndarray::Zip::from(&case.image).and(&quiet.image).and(&case.labels).fold(
            Vec::new(),
            |mut v, &a, &b, &l| {
                if l == LIVER {
                    v.push(f64::from(a - b));
                }
                v
            },
        );
        let mean = diff.iter().sum::<f64>() / diff.len() as f64;
        let measured = (diff.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / diff.len() as f64).sqrt();
        assert!((measured - sd).abs() < 0.1 * sd + 0.5, "noise {sd} HU: measured {measured}");
    }
}

#[test]
fn options_are_validated() {
    assert!(PhantomOptions::default().validate().is_ok());
    let bad = [
        PhantomOptions { inplane_spacing_mm: [3.0, 2.0], ..PhantomOptions::default() },
        PhantomOptions { slice_spacing_mm: [0.0, 2.0], ..PhantomOptions::default() },
        PhantomOptions { noise_sd_hu: [f64::NAN, 2.0], ..PhantomOptions::default() },
        PhantomOptions { non_ras_fraction: 1.5, ..PhantomOptions::default() },
        PhantomOptions { scale: 0.0, ..PhantomOptions::default() },
        PhantomOptions { lesion_radius_mm: [20.0, 10.0], ..PhantomOptions::default() },
        PhantomOptions { lesion_radius_mm: [0.5, 10.0], ..PhantomOptions::default() },
        PhantomOptions { lesion_contrast_hu: [50.0, 40.0], ..PhantomOptions::default() },
        PhantomOptions { lesion_contrast_hu: [-1.0, 40.0], ..PhantomOptions::default() },
        PhantomOptions { noise_sd_hu: [5.0, f64::INFINITY], ..PhantomOptions::default() },
    ];
    for o in bad {
        assert!(o.validate().is_err(), "{o:?}");
        let tmp = tempfile::tempdir().unwrap();
        assert!(phantom::write_dataset(tmp.path(), "D", &o).is_err());
    }
    let tmp = tempfile::tempdir().unwrap();
    assert!(phantom::write_dataset(tmp.path(), "a/b", &small(1)).is_err());
    assert!(phantom::write_dataset(tmp.path(), "D", &PhantomOptions { cases: 0, ..small(1) }).is_err());
}

#[test]
#[ignore = "prints statistics of default-size phantoms (PHANTOM_CASES, default 8)"]
fn print_statistics() {
    let n: usize = std::env::var("PHANTOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let o = PhantomOptions::default();
    let (mut seconds, mut voxels, mut with_lesions, mut lesions, mut lesion_ml, mut cysts) =
        (0.0, 0usize, 0, 0, 0.0, 0);
    for i in 0..n {
        let t = Instant::now();
        let c = generate_case(&o, i);
        let dt = t.elapsed().as_secs_f64();
        seconds += dt;
        voxels += c.image.len();
        with_lesions += usize::from(c.liver_lesions > 0);
        lesions += c.liver_lesions;
        lesion_ml += c.volume_ml(LIVER_LESION);
        cysts += usize::from(c.kidney_cyst);
        if n > 8 {
            continue;
        }
        println!(
            "case {i}: {:?} {} spacing {:.2?} {:.0} ms lesions {} cyst {}",
            c.image.shape(),
            c.axcodes,
            c.spacing(),
            dt * 1000.0,
            c.liver_lesions,
            c.kidney_cyst
        );
        for &(name, v) in &LABELS[1..] {
            let cw = c.centroid_world(v).map(|w| w.map(|x| x.round()));
            println!("  {name:16} {:8.1} ml centroid {cw:?}", c.volume_ml(v));
        }
        let (lmin, lmax) = c.image.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        println!("  HU range {lmin} .. {lmax}");
    }
    println!(
        "{n} cases: {:.0} ms and {:.0} k voxels per case; {with_lesions} with liver lesions ({lesions} \
         lesions, {:.1} ml per lesion), {cysts} kidney cysts",
        seconds * 1000.0 / n as f64,
        voxels as f64 / n as f64 / 1000.0,
        lesion_ml / lesions.max(1) as f64
    );
}
