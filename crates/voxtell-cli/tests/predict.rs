//! `voxtell predict` end to end: the built binary against the official tool's outputs on the
//! tiny random-weight model (fixtures/fusion/cfg_a), batch and error handling, and the extras.
//!
//! Every run clears $VOXTELL_MODEL, $VOXTELL_EMBEDDINGS and $VOXTELL_TEXT_MODEL and points
//! $HF_HOME at an empty folder, so nothing outside the fixtures is found.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

use voxtell::io::{DicomOptions, SourceFormat, Volume, read_dicom_series, read_nifti};

// ---------------------------------------------------------------------------------------------
// Helpers

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn predict_dir() -> PathBuf {
    fixtures().join("infer/predict")
}

fn model() -> PathBuf {
    fixtures().join("fusion/cfg_a")
}

fn bank() -> PathBuf {
    predict_dir().join("bank.npz")
}

fn image(case: &str) -> PathBuf {
    predict_dir().join("images").join(format!("{case}.nii.gz"))
}

fn config() -> serde_json::Value {
    let text = std::fs::read_to_string(predict_dir().join("config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The cases of config.json: (name, prompts, official per-prompt files, official combined file).
fn official_cases() -> Vec<(String, Vec<String>, Vec<PathBuf>, PathBuf)> {
    let config = config();
    config["cases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, c)| {
            let strings = |v: &serde_json::Value| -> Vec<String> {
                v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
            };
            let outputs = strings(&c["official_outputs"]).iter().map(|f| predict_dir().join(f)).collect();
            let combined = predict_dir().join(c["official_combined"].as_str().unwrap());
            (name.clone(), strings(&c["prompts"]), outputs, combined)
        })
        .collect()
}

/// The result of one run of the binary.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Run `voxtell ARGS` with no model, bank or text model reachable through the environment.
fn voxtell_in(args: &[OsString], cwd: Option<&Path>) -> Run {
    let empty_home = std::env::temp_dir().join("voxtell-predict-tests-no-hf-home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_voxtell"));
    cmd.args(args)
        .env("VOXTELL_MODEL", "")
        .env("VOXTELL_EMBEDDINGS", "")
        .env("VOXTELL_TEXT_MODEL", "")
        .env("HF_HOME", empty_home);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn voxtell(args: &[OsString]) -> Run {
    voxtell_in(args, None)
}

/// Build an argument list from anything path- or string-like.
macro_rules! args {
    ($($a:expr),* $(,)?) => {{
        let v: Vec<OsString> = vec![$(OsString::from(AsRef::<OsStr>::as_ref(&$a))),*];
        v
    }};
}

/// `predict -m MODEL --embeddings BANK -o OUT` followed by `extra`.
fn predict(out: &Path, extra: &[OsString]) -> Run {
    let mut a = args!["predict", "-m", model(), "--embeddings", bank(), "-o", out];
    a.extend_from_slice(extra);
    voxtell(&a)
}

/// `predict` of the fixture images for `Liver` with the model folder `m` (the fixtures' bank).
fn predict_with_model(m: &Path, out: &Path) -> Run {
    voxtell(&args![
        "predict",
        "-i",
        predict_dir().join("images"),
        "-m",
        m,
        "--embeddings",
        bank(),
        "-p",
        "Liver",
        "-o",
        out
    ])
}

/// `predict -i INPUT -p PROMPTS` with the fixtures' model and bank, into `out`.
fn predict_input(input: &Path, out: &Path, p: &[&str]) -> Run {
    let mut a = args!["-i", input];
    a.extend(prompts(p));
    predict(out, &a)
}

/// `-p` with the given prompts.
fn prompts(p: &[&str]) -> Vec<OsString> {
    let mut a = args!["-p"];
    a.extend(p.iter().map(OsString::from));
    a
}

/// Every entry of a folder (hidden ones included), sorted; empty when the folder is missing.
fn entries(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn read(path: &Path) -> Volume {
    read_nifti(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_affine_diff(a: &Volume, b: &Volume) -> f64 {
    let mut m = 0f64;
    for r in 0..4 {
        for c in 0..4 {
            m = m.max((a.affine[r][c] - b.affine[r][c]).abs());
        }
    }
    m
}

/// How many voxels of two volumes of the same shape differ.
fn differing(a: &Volume, b: &Volume) -> usize {
    assert_eq!(a.data.shape(), b.data.shape());
    a.data.iter().zip(b.data.iter()).filter(|(x, y)| x != y).count()
}

fn nonzero(v: &Volume) -> usize {
    v.data.iter().filter(|&&x| x != 0.0).count()
}

/// Assert `got` has the shape and affine of `want` and at most `per_mille` ‰ differing voxels;
/// returns the number of differing voxels.
fn assert_close(got: &Path, want: &Path, per_mille: usize) -> usize {
    let (g, w) = (read(got), read(want));
    assert_eq!(g.data.shape(), w.data.shape(), "{} vs {}", got.display(), want.display());
    let da = max_affine_diff(&g, &w);
    assert!(da <= 1e-5, "{}: affine differs by {da} from {}", got.display(), want.display());
    let d = differing(&g, &w);
    let n = w.data.len();
    eprintln!("{}: {d} of {n} voxels differ from {}", got.display(), want.display());
    assert!(d * 1000 <= n * per_mille, "{}: {d} of {n} voxels differ from {}", got.display(), want.display());
    d
}

/// A failed run that names `needles` on stderr and left nothing in `out`.
fn assert_fails_cleanly(r: &Run, out: &Path, needles: &[&str]) {
    assert!(!r.ok, "expected a failure; stderr:\n{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "stderr does not name {n:?}:\n{}", r.stderr);
    }
    let left = entries(out);
    assert!(left.is_empty(), "files left behind in {}: {left:?}", out.display());
}

const GZ_GARBAGE: &[u8] = b"\x1f\x8b\x08\x00 this is not a gzip stream, nor a NIfTI file at all........";

// ---------------------------------------------------------------------------------------------
// 1. End to end against the official tool

#[test]
fn per_prompt_outputs_match_the_official_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut expected = BTreeSet::new();
    let cases = official_cases();
    assert_eq!(cases.len(), 2);
    for (case, case_prompts, official, _) in &cases {
        let p: Vec<&str> = case_prompts.iter().map(String::as_str).collect();
        let mut a = args!["-i", image(case), "-q"];
        a.extend(prompts(&p));
        let r = predict(&out, &a);
        assert!(r.ok, "{case}: {}", r.stderr);
        expected.extend(official.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()));
    }
    assert_eq!(entries(&out), expected, "output names differ from the official ones");
    let mut total = 0;
    for (_, _, official, _) in &cases {
        for f in official {
            let got = out.join(f.file_name().unwrap());
            let v = read(&got);
            assert!(v.data.iter().all(|&x| x == 0.0 || x == 1.0), "{}: not a binary mask", got.display());
            total += assert_close(&got, f, 1);
        }
    }
    eprintln!("per-prompt masks: {total} differing voxels in all");
}

#[test]
fn combined_outputs_match_the_official_tool() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let cases = official_cases();
    for (case, case_prompts, _, _) in &cases {
        let p: Vec<&str> = case_prompts.iter().map(String::as_str).collect();
        let mut a = args!["-i", image(case), "--save-combined", "-q"];
        a.extend(prompts(&p));
        let r = predict(&out, &a);
        assert!(r.ok, "{case}: {}", r.stderr);
    }
    let expected: BTreeSet<String> = cases.iter().map(|(c, ..)| format!("{c}.nii.gz")).collect();
    assert_eq!(entries(&out), expected, "--save-combined writes only {{case}}.nii.gz");
    for (case, _, _, combined) in &cases {
        let d = assert_close(&out.join(format!("{case}.nii.gz")), combined, 1);
        eprintln!("{case}: combined map differs on {d} voxels");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. --jobs

#[test]
fn jobs_from_a_file_and_inline_json() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = serde_json::json!([
        {"image": image("ct_oblique"), "prompts": "Liver"},
        {"image": image("mr_small"), "prompts": ["left kidney", "Läsion der Leber"]},
    ])
    .to_string();
    let jobs_file = tmp.path().join("jobs.json");
    std::fs::write(&jobs_file, &jobs).unwrap();
    let want =
        set(&["ct_oblique_Liver.nii.gz", "mr_small_left_kidney.nii.gz", "mr_small_Läsion_der_Leber.nii.gz"]);
    // -i is ignored with --jobs, even when it names nothing that exists.
    let missing = tmp.path().join("not-there.nii.gz");
    let from_file = tmp.path().join("from_file");
    let r = predict(&from_file, &args!["--jobs", jobs_file, "-i", missing]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&from_file), want);
    let inline = tmp.path().join("inline");
    let r = predict(&inline, &args!["--jobs", jobs, "-i", predict_dir().join("images")]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&inline), want, "-i must not add cases to --jobs");
    for f in &want {
        assert_eq!(differing(&read(&from_file.join(f)), &read(&inline.join(f))), 0, "{f}");
        assert_close(&inline.join(f), &predict_dir().join("official").join(f), 1);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Bad inputs fail early, name the culprit and leave nothing behind

#[test]
fn a_missing_input_path_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let missing = tmp.path().join("nowhere/scan.nii.gz");
    let mut a = args!["-i", image("mr_small"), missing];
    a.extend(prompts(&["Liver"]));
    let r = predict(&out, &a);
    assert_fails_cleanly(&r, &out, &[&missing.display().to_string()]);
}

#[test]
fn a_folder_with_neither_nifti_nor_dicom_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("just_notes");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("readme.txt"), "no scans here").unwrap();
    let out = tmp.path().join("out");
    let r = predict_input(&folder, &out, &["Liver"]);
    assert_fails_cleanly(&r, &out, &[&folder.display().to_string()]);
}

#[test]
fn a_folder_with_nifti_and_dicom_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("mixed");
    std::fs::create_dir(&folder).unwrap();
    for f in ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm"] {
        std::fs::copy(fixtures().join("io/dicom/mr_oblique").join(f), folder.join(f)).unwrap();
    }
    std::fs::copy(image("mr_small"), folder.join("mr_small.nii.gz")).unwrap();
    let out = tmp.path().join("out");
    let r = predict_input(&folder, &out, &["Liver"]);
    assert_fails_cleanly(&r, &out, &[&folder.display().to_string()]);
}

#[test]
fn a_model_folder_without_a_checkpoint_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("model");
    std::fs::create_dir(&m).unwrap();
    std::fs::copy(model().join("plans.json"), m.join("plans.json")).unwrap();
    let out = tmp.path().join("out");
    let r = predict_with_model(&m, &out);
    assert_fails_cleanly(&r, &out, &[&m.display().to_string(), "checkpoint_final.pth"]);
}

#[test]
fn a_missing_model_folder_fails_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("no-such-model");
    let out = tmp.path().join("out");
    let r = predict_with_model(&m, &out);
    assert_fails_cleanly(&r, &out, &[&m.display().to_string()]);
}

#[test]
fn an_unknown_prompt_without_text_model_fails_before_any_image_work() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("images");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a_corrupt.nii.gz"), GZ_GARBAGE).unwrap();
    std::fs::copy(image("mr_small"), folder.join("mr_small.nii.gz")).unwrap();
    let out = tmp.path().join("out");
    let r = predict_input(&folder, &out, &["Liver", "pancreatic duct"]);
    assert_fails_cleanly(&r, &out, &["pancreatic duct", "no text model"]);
    assert!(!r.stderr.contains("a_corrupt"), "the image was read before the prompt failed:\n{}", r.stderr);
    assert!(!r.stderr.contains("tiles"), "the prediction started before the prompt failed:\n{}", r.stderr);
}

#[test]
fn two_prompts_with_the_same_output_name_fail_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a = args!["-i", predict_dir().join("images")];
    a.extend(prompts(&["Liver", "left kidney", "left_kidney"]));
    let r = predict(&out, &a);
    assert_fails_cleanly(&r, &out, &["\"left kidney\"", "\"left_kidney\"", "left_kidney.nii.gz"]);
    assert!(!r.stderr.contains("tiles"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// 4. One bad case does not stop the batch

#[test]
fn a_corrupt_case_is_reported_at_the_end_and_the_others_are_written() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("images");
    std::fs::create_dir(&folder).unwrap();
    // Sorted by name, the broken file is the middle case.
    std::fs::copy(image("ct_oblique"), folder.join("ct_oblique.nii.gz")).unwrap();
    let broken = folder.join("d_broken.nii.gz");
    std::fs::write(&broken, GZ_GARBAGE).unwrap();
    std::fs::copy(image("mr_small"), folder.join("mr_small.nii.gz")).unwrap();
    let out = tmp.path().join("out");
    let r = predict_input(&folder, &out, &["Liver", "left kidney"]);
    assert!(!r.ok, "a failed case must give a non-zero exit code:\n{}", r.stderr);
    assert_eq!(
        entries(&out),
        set(&[
            "ct_oblique_Liver.nii.gz",
            "ct_oblique_left_kidney.nii.gz",
            "mr_small_Liver.nii.gz",
            "mr_small_left_kidney.nii.gz"
        ]),
        "the good cases are written, nothing of the broken one (nor temporary files)"
    );
    for f in entries(&out) {
        read(&out.join(f));
    }
    let summary =
        r.stderr.rfind("1 of 3 case(s) failed").unwrap_or_else(|| panic!("no summary:\n{}", r.stderr));
    let tail = &r.stderr[summary..];
    assert!(tail.contains(&broken.display().to_string()), "the summary names the broken file:\n{}", r.stderr);
    assert!(!tail.contains("ct_oblique.nii.gz") && !tail.contains("mr_small.nii.gz"), "{tail}");
    let last_write = r.stderr.rfind("wrote").unwrap();
    assert!(last_write < summary, "the failure is reported after the batch:\n{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// 5. --no-overwrite

#[test]
fn no_overwrite_skips_finished_cases_only() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a = args!["-i", predict_dir().join("images")];
    a.extend(prompts(&["Liver"]));
    let mut no_ow = a.clone();
    no_ow.push("--no-overwrite".into());
    let (ct, mr) = (out.join("ct_oblique_Liver.nii.gz"), out.join("mr_small_Liver.nii.gz"));

    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    let (ct_first, mr_first) = (read(&ct), read(&mr));
    let mr_mtime = std::fs::metadata(&mr).unwrap().modified().unwrap();

    // Every output exists: both cases are skipped and nothing is touched.
    std::fs::write(&ct, b"marker").unwrap();
    let r = predict(&out, &no_ow);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("skipping"), "{}", r.stderr);
    assert_eq!(std::fs::read(&ct).unwrap(), b"marker", "a skipped case's output was rewritten");
    assert_eq!(std::fs::metadata(&mr).unwrap().modified().unwrap(), mr_mtime);
    assert!(!r.stderr.contains("tiles"), "{}", r.stderr);

    // A missing output: that case runs again, the other stays skipped.
    std::fs::remove_file(&mr).unwrap();
    let r = predict(&out, &no_ow);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(differing(&read(&mr), &mr_first), 0);
    assert_eq!(std::fs::read(&ct).unwrap(), b"marker");

    // Without the flag everything is rewritten.
    std::fs::write(&mr, b"marker").unwrap();
    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(differing(&read(&ct), &ct_first), 0);
    assert_eq!(differing(&read(&mr), &mr_first), 0);
    assert_eq!(entries(&out), set(&["ct_oblique_Liver.nii.gz", "mr_small_Liver.nii.gz"]));
}

// ---------------------------------------------------------------------------------------------
// 6. Extras

#[test]
fn statistics_preview_and_probabilities_agree_with_the_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a =
        args!["-i", predict_dir().join("images"), "--statistics", "--preview", "--save-probabilities"];
    a.extend(prompts(&["Liver", "left kidney"]));
    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    let mut want = BTreeSet::new();
    for case in ["ct_oblique", "mr_small"] {
        for safe in ["Liver", "left_kidney"] {
            want.insert(format!("{case}_{safe}.nii.gz"));
            want.insert(format!("{case}_{safe}_prob.nii.gz"));
        }
        want.insert(format!("{case}_statistics.json"));
        want.insert(format!("{case}_preview.png"));
    }
    assert_eq!(entries(&out), want);

    for case in ["ct_oblique", "mr_small"] {
        // Statistics: per-prompt voxel counts are those of the written masks.
        let text = std::fs::read_to_string(out.join(format!("{case}_statistics.json"))).unwrap();
        let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(stats["case"], case);
        let per_prompt = stats["prompts"].as_array().unwrap();
        assert_eq!(per_prompt.len(), 2);
        for (entry, (prompt, safe)) in
            per_prompt.iter().zip([("Liver", "Liver"), ("left kidney", "left_kidney")])
        {
            assert_eq!(entry["prompt"], prompt);
            let mask = read(&out.join(format!("{case}_{safe}.nii.gz")));
            let shape: Vec<usize> =
                stats["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            assert_eq!(shape, mask.data.shape(), "{case}: statistics shape");
            let n = nonzero(&mask);
            assert!(n > 0, "{case} {prompt}: empty mask");
            assert_eq!(entry["voxels"].as_u64().unwrap() as usize, n, "{case} {prompt}: voxel count");
            // Intensity: the scan's values where the written mask is set (same grid).
            let scan = read(&predict_dir().join("images").join(format!("{case}.nii.gz")));
            let inside: Vec<f64> = scan
                .data
                .iter()
                .zip(mask.data.iter())
                .filter(|&(&v, &m)| m != 0.0 && v.is_finite())
                .map(|(&v, _)| f64::from(v))
                .collect();
            let it = &entry["intensity"];
            let get =
                |k: &str| it[k].as_f64().unwrap_or_else(|| panic!("{case} {prompt}: intensity.{k}: {it}"));
            let mean = inside.iter().sum::<f64>() / inside.len() as f64;
            let std = (inside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / inside.len() as f64).sqrt();
            let tol = 1e-9 * (1.0 + mean.abs() + std);
            assert!((get("mean") - mean).abs() <= tol, "{case} {prompt}: mean {} vs {mean}", get("mean"));
            assert!((get("std") - std).abs() <= tol, "{case} {prompt}: std {} vs {std}", get("std"));
            assert_eq!(get("min"), inside.iter().copied().fold(f64::INFINITY, f64::min));
            assert_eq!(get("max"), inside.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            assert!(get("min") <= get("p5") && get("p5") <= get("p50"), "{it}");
            assert!(get("p50") <= get("p95") && get("p95") <= get("max"), "{it}");

            // Probabilities: f32 in [0, 1], > 0.5 where the mask is set.
            let prob_path = out.join(format!("{case}_{safe}_prob.nii.gz"));
            let prob = read(&prob_path);
            match &prob.source.format {
                SourceFormat::Nifti { datatype, .. } => {
                    assert_eq!(*datatype, "float32", "{}", prob_path.display())
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(prob.data.shape(), mask.data.shape());
            assert!(max_affine_diff(&prob, &mask) <= 1e-5);
            assert!(
                prob.data.iter().all(|&p| (0.0..=1.0).contains(&p)),
                "{}: outside [0, 1]",
                prob_path.display()
            );
            let disagree =
                prob.data.iter().zip(mask.data.iter()).filter(|&(&p, &m)| (p > 0.5) != (m == 1.0)).count();
            eprintln!("{}: {disagree} voxels where p > 0.5 disagrees with the mask", prob_path.display());
            assert!(
                disagree * 1000 <= mask.data.len(),
                "{}: {disagree} disagreeing voxels",
                prob_path.display()
            );
        }

        // Preview: a PNG with a non-empty image.
        let png = std::fs::read(out.join(format!("{case}_preview.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{case}: not a PNG");
        assert!(png.len() > 1000, "{case}: preview of {} bytes", png.len());
        assert_eq!(&png[12..16], b"IHDR");
        let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert!(width >= 16 && height >= 16, "{case}: preview is {width} × {height}");
    }
}

/// Sizes of the 6-connected components of the non-zero voxels, largest first.
fn component_sizes(v: &Volume) -> Vec<usize> {
    let sh = v.data.shape();
    let (nx, ny, nz) = (sh[0], sh[1], sh[2]);
    let mut seen = vec![false; nx * ny * nz];
    let idx = |i: usize, j: usize, k: usize| (i * ny + j) * nz + k;
    let mut sizes = Vec::new();
    for i in 0..nx {
        for j in 0..ny {
            for k in 0..nz {
                if v.data[[i, j, k]] == 0.0 || seen[idx(i, j, k)] {
                    continue;
                }
                seen[idx(i, j, k)] = true;
                let mut queue = VecDeque::from([(i, j, k)]);
                let mut size = 0;
                while let Some((a, b, c)) = queue.pop_front() {
                    size += 1;
                    let mut next = Vec::with_capacity(6);
                    if a > 0 {
                        next.push((a - 1, b, c));
                    }
                    if a + 1 < nx {
                        next.push((a + 1, b, c));
                    }
                    if b > 0 {
                        next.push((a, b - 1, c));
                    }
                    if b + 1 < ny {
                        next.push((a, b + 1, c));
                    }
                    if c > 0 {
                        next.push((a, b, c - 1));
                    }
                    if c + 1 < nz {
                        next.push((a, b, c + 1));
                    }
                    for (x, y, z) in next {
                        if v.data[[x, y, z]] != 0.0 && !seen[idx(x, y, z)] {
                            seen[idx(x, y, z)] = true;
                            queue.push_back((x, y, z));
                        }
                    }
                }
                sizes.push(size);
            }
        }
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes
}

#[test]
fn keep_largest_gives_the_largest_component_of_the_plain_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let (plain, largest) = (tmp.path().join("plain"), tmp.path().join("largest"));
    let mut a = args!["-i", predict_dir().join("images"), "-q"];
    a.extend(prompts(&["Liver", "lesion (liver)/segment 4"]));
    let r = predict(&plain, &a);
    assert!(r.ok, "{}", r.stderr);
    a.push("--keep-largest".into());
    let r = predict(&largest, &a);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&plain), entries(&largest));
    for f in entries(&plain) {
        let (p, l) = (read(&plain.join(&f)), read(&largest.join(&f)));
        assert_eq!(p.data.shape(), l.data.shape());
        let outside = l.data.iter().zip(p.data.iter()).filter(|&(&l, &p)| l != 0.0 && p == 0.0).count();
        assert_eq!(outside, 0, "{f}: --keep-largest added voxels");
        let (ps, ls) = (component_sizes(&p), component_sizes(&l));
        eprintln!("{f}: {} component(s), largest {:?}", ps.len(), ps.first());
        assert_eq!(ls.len(), 1, "{f}: --keep-largest left {} components", ls.len());
        assert_eq!(ls[0], ps[0], "{f}: the kept component is not the largest");
    }
}

#[test]
fn accumulating_in_f32_differs_little_from_f16() {
    let tmp = tempfile::tempdir().unwrap();
    let (f16, f32) = (tmp.path().join("f16"), tmp.path().join("f32"));
    let mut a = args!["-i", predict_dir().join("images"), "-q"];
    a.extend(prompts(&["Liver", "left kidney", "lesion (liver)/segment 4", "Läsion der Leber"]));
    let r = predict(&f16, &a);
    assert!(r.ok, "{}", r.stderr);
    a.extend(args!["--accumulate", "f32"]);
    let r = predict(&f32, &a);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&f16), entries(&f32));
    assert_eq!(entries(&f16).len(), 8);
    for f in entries(&f16) {
        assert_close(&f32.join(&f), &f16.join(&f), 10);
    }
}

#[test]
fn precision_bf16_runs_and_an_unknown_precision_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (f32, bf16) = (tmp.path().join("f32"), tmp.path().join("bf16"));
    let mut a = args!["-i", image("mr_small"), "-q"];
    a.extend(prompts(&["Liver"]));
    let r = predict(&f32, &a);
    assert!(r.ok, "{}", r.stderr);
    let mut b = a.clone();
    b.extend(args!["--precision", "bf16"]);
    let r = predict(&bf16, &b);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&f32), entries(&bf16));
    let mut c = a.clone();
    c.extend(args!["--precision", "fp8"]);
    let bad = tmp.path().join("bad");
    let r = predict(&bad, &c);
    assert!(!r.ok && r.stderr.contains("--precision") && r.stderr.contains("fp8"), "{}", r.stderr);
    assert!(entries(&bad).is_empty());
}

#[test]
fn a_tiny_memory_budget_fails_naming_max_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a = args!["-i", image("mr_small"), "--max-memory", "1K"];
    a.extend(prompts(&["Liver"]));
    let r = predict(&out, &a);
    assert!(!r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("--max-memory") && r.stderr.contains("memory"), "{}", r.stderr);
    let left: Vec<_> = entries(&out).into_iter().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_moderate_memory_budget_runs_prompts_in_groups_with_the_same_masks() {
    let tmp = tempfile::tempdir().unwrap();
    let all = ["Liver", "left kidney", "lesion (liver)/segment 4", "Läsion der Leber"];
    let reference = tmp.path().join("reference");
    let mut a = args!["-i", predict_dir().join("images")];
    a.extend(prompts(&all));
    let r = predict(&reference, &a);
    assert!(r.ok, "{}", r.stderr);
    assert!(!r.stderr.contains("groups"), "the default budget needs no groups:\n{}", r.stderr);
    let mut grouped = None;
    let mut tried = Vec::new();
    for size in ["3M", "4M", "4500K", "5M", "5500K", "6M", "8M"] {
        let out = tmp.path().join(format!("budget_{size}"));
        let mut b = a.clone();
        b.extend(args!["--max-memory", size]);
        let r = predict(&out, &b);
        tried.push(format!("{size}: ok={} groups={}", r.ok, r.stderr.contains("groups")));
        if r.ok && r.stderr.contains("groups") {
            grouped = Some(out);
            break;
        }
    }
    let grouped = grouped.unwrap_or_else(|| panic!("no budget ran prompts in groups: {tried:?}"));
    eprintln!("budgets tried: {tried:?}");
    assert_eq!(entries(&grouped), entries(&reference));
    for f in entries(&reference) {
        let d = differing(&read(&grouped.join(&f)), &read(&reference.join(&f)));
        assert_eq!(d, 0, "{f}: grouped prompts changed {d} voxels");
    }
}

// ---------------------------------------------------------------------------------------------
// 7. DICOM

/// The "shape:" of `voxtell info PATH`, as numbers.
fn info_shape(path: &Path) -> Vec<usize> {
    let r = voxtell(&args!["info", path]);
    assert!(r.ok, "{}", r.stderr);
    let line = r.stdout.lines().find(|l| l.trim_start().starts_with("shape:")).unwrap();
    line.trim_start().trim_start_matches("shape:").split('×').map(|n| n.trim().parse().unwrap()).collect()
}

#[test]
fn a_dicom_folder_is_one_case_named_after_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let series = fixtures().join("io/dicom/mr_oblique");
    let out = tmp.path().join("out");
    let mut a = args!["-i", series];
    a.extend(prompts(&["Liver"]));
    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&out), set(&["mr_oblique_Liver.nii.gz"]));
    let mask = read(&out.join("mr_oblique_Liver.nii.gz"));
    assert_eq!(mask.data.shape(), info_shape(&series).as_slice());
    let scan = read_dicom_series(&series, &DicomOptions::default()).unwrap();
    assert!(max_affine_diff(&mask, &scan) <= 1e-5, "{:?} vs {:?}", mask.affine, scan.affine);
    assert!(nonzero(&mask) > 0);
}

/// The SegmentLabels of a SEG, in segment order.
fn seg_labels(path: &Path) -> Vec<String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::open_file(path).unwrap();
    let items = obj.element(tags::SEGMENT_SEQUENCE).unwrap().items().unwrap().to_vec();
    items
        .iter()
        .map(|i| {
            i.element(tags::SEGMENT_LABEL)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches([' ', '\0'])
                .to_string()
        })
        .collect()
}

#[test]
fn dicom_seg_output_alone_or_beside_nifti_and_empty_prompts_named() {
    let tmp = tempfile::tempdir().unwrap();
    let series = fixtures().join("io/dicom/mr_oblique");
    let names = ["Liver", "left kidney"];
    // dicom_seg (TotalSegmentator's spelling) alone: the SEG, statistics, no NIfTI masks.
    let out = tmp.path().join("seg");
    let mut a = args!["-i", series, "--output-type", "dicom_seg", "--statistics"];
    a.extend(prompts(&names));
    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("mr_oblique_statistics.json")).unwrap())
            .unwrap();
    let empty: Vec<String> =
        stats["empty_prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    let found: Vec<&str> = names.iter().copied().filter(|n| !empty.iter().any(|e| e == n)).collect();
    eprintln!("empty: {empty:?}");
    if found.is_empty() {
        assert_eq!(entries(&out), set(&["mr_oblique_seg.json", "mr_oblique_statistics.json"]));
    } else {
        assert_eq!(entries(&out), set(&["mr_oblique_seg.dcm", "mr_oblique_statistics.json"]));
        assert_eq!(seg_labels(&out.join("mr_oblique_seg.dcm")), found);
    }
    for e in &empty {
        assert!(r.stderr.contains(&format!("{e:?}")) && r.stderr.contains("empty mask"), "{e}: {}", r.stderr);
    }
    // Intensity in the series' own units for found structures, null for empty ones.
    for entry in stats["prompts"].as_array().unwrap() {
        let it = &entry["intensity"];
        if entry["voxels"] == 0 {
            assert!(it.is_null(), "{entry}");
        } else {
            let (lo, mean, hi) =
                (it["min"].as_f64().unwrap(), it["mean"].as_f64().unwrap(), it["max"].as_f64().unwrap());
            assert!(lo <= mean && mean <= hi, "{entry}");
        }
    }
    if empty.is_empty() {
        assert!(!r.stderr.contains("empty mask"), "{}", r.stderr);
    }
    // Both: the NIfTI masks too, and each prompt's mask is empty exactly when the SEG lacks it.
    let out = tmp.path().join("both");
    let mut a = args!["-i", series, "--output-type", "nifti,dicom-seg"];
    a.extend(prompts(&names));
    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    for n in names {
        let mask = read(&out.join(format!("mr_oblique_{}.nii.gz", n.replace(' ', "_"))));
        assert_eq!(nonzero(&mask) == 0, empty.iter().any(|e| e == n), "{n}");
    }
    // --no-overwrite: the SEG counts as the case's DICOM output.
    let r = predict(&out, &[a.clone(), args!["--no-overwrite"]].concat());
    assert!(r.ok && r.stderr.contains("skipping 1 case"), "{}", r.stderr);
}

#[test]
fn dicom_seg_of_a_nifti_input_or_with_a_combined_map_only_is_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a = args!["-i", image("mr_small"), "--output-type", "dicom-seg"];
    a.extend(prompts(&["Liver"]));
    let r = predict(&out, &a);
    assert_fails_cleanly(&r, &out, &["mr_small", "DICOM source series", "--output-type"]);
    let mut a =
        args!["-i", fixtures().join("io/dicom/mr_oblique"), "--output-type", "dicom-seg", "--save-combined"];
    a.extend(prompts(&["Liver"]));
    let r = predict(&out, &a);
    assert_fails_cleanly(&r, &out, &["--save-combined", "nifti"]);
    let r = predict(&out, &[a, args!["--output-type", "rtstruct"]].concat());
    assert_fails_cleanly(&r, &out, &["rtstruct"]);
}

#[test]
fn a_dicom_folder_given_as_dot_is_named_after_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("mr_oblique");
    std::fs::create_dir(&folder).unwrap();
    for e in std::fs::read_dir(fixtures().join("io/dicom/mr_oblique")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), folder.join(e.file_name())).unwrap();
    }
    let out = tmp.path().join("out");
    let r = voxtell_in(
        &args!["predict", "-i", ".", "-m", model(), "--embeddings", bank(), "-p", "Liver", "-o", out],
        Some(&folder),
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&out), set(&["mr_oblique_Liver.nii.gz"]));
}

#[test]
fn one_image_in_two_jobs_with_different_prompts() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = serde_json::json!([
        {"image": image("mr_small"), "prompts": "Liver"},
        {"image": image("mr_small"), "prompts": ["left kidney"]},
    ])
    .to_string();
    let out = tmp.path().join("out");
    let r = predict(&out, &args!["--jobs", jobs]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(entries(&out), set(&["mr_small_Liver.nii.gz", "mr_small_left_kidney.nii.gz"]));
}

// ---------------------------------------------------------------------------------------------
// 8. Listing the bank, model info

#[test]
fn list_embeddings_prints_the_bank_prompts() {
    let r = voxtell(&args!["predict", "--list-embeddings", "--embeddings", bank()]);
    assert!(r.ok, "{}", r.stderr);
    let labels: Vec<String> = config()["bank"]["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels.len(), 4);
    let printed: Vec<&str> = r.stdout.lines().skip(1).collect();
    assert_eq!(printed, labels, "{}", r.stdout);
    assert!(r.stdout.starts_with("4 prompts, 24-wide"), "{}", r.stdout);
}

#[test]
fn list_embeddings_without_a_bank_names_where_it_looked() {
    // No --embeddings, $VOXTELL_EMBEDDINGS empty, $HF_HOME an empty folder.
    let r = voxtell(&args!["predict", "--list-embeddings"]);
    assert!(!r.ok, "{}", r.stdout);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("no embedding bank to list"), "{}", r.stderr);
    assert!(r.stderr.contains("VOXTELL_EMBEDDINGS"), "{}", r.stderr);
    assert!(r.stderr.contains("voxtell-predict-tests-no-hf-home"), "{}", r.stderr);
    assert!(r.stderr.contains("--embeddings"), "{}", r.stderr);
    // Turned off, there is nothing to list either.
    let r = voxtell(&args!["predict", "--list-embeddings", "--no-precomputed"]);
    assert!(!r.ok && r.stderr.contains("--no-precomputed"), "{}", r.stderr);
}

#[test]
fn devices_are_named_with_an_index_and_conflicts_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut a = args!["-i", image("mr_small"), "-p", "Liver"];
        a.extend(extra.iter().map(OsString::from));
        predict(tmp.path(), &a)
    };
    let r = run(&["--device", "cuda:1", "--gpu", "2"]);
    assert!(!r.ok && r.stderr.contains("GPU 1") && r.stderr.contains("GPU 2"), "{}", r.stderr);
    let r = run(&["--device", "cpu", "--gpu", "1"]);
    assert!(!r.ok && r.stderr.contains("--device cpu"), "{}", r.stderr);
    let r = run(&["--device", "tpu"]);
    assert!(!r.ok && r.stderr.contains("unknown device \"tpu\""), "{}", r.stderr);
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none(), "a refused run wrote files");
    // Without CUDA in the build, a CUDA device falls back to the CPU with a warning.
    if !cfg!(feature = "cuda") {
        let r = run(&["--device", "cuda:0"]);
        assert!(r.ok, "{}", r.stderr);
        assert!(r.stderr.contains("CUDA device 0 unavailable"), "{}", r.stderr);
    }
}

#[test]
fn info_describes_the_model_folder() {
    let r = voxtell(&args!["info", model()]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("parameters:"), "{}", r.stdout);
    let patch = config()["patch_size"].as_array().unwrap().iter().map(|v| v.to_string()).collect::<Vec<_>>();
    let line = r.stdout.lines().find(|l| l.contains("patch size:")).unwrap_or_else(|| panic!("{}", r.stdout));
    assert!(line.contains(&format!("[{}]", patch.join(", "))), "{line}");
}

// ---------------------------------------------------------------------------------------------
// 9. Quiet runs and help

#[test]
fn quiet_prints_nothing_on_success() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut a = args!["-i", predict_dir().join("images"), "--quiet", "--statistics"];
    a.extend(prompts(&["Liver"]));
    let r = predict(&out, &a);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stderr, "", "--quiet printed on stderr");
    assert_eq!(r.stdout, "", "--quiet printed on stdout");
    assert_eq!(entries(&out).len(), 4);
    // Not quiet: the same run reports its progress.
    let r = predict(&tmp.path().join("loud"), &args!["-i", image("mr_small"), "-p", "Liver"]);
    assert!(r.ok && !r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn help_mentions_every_flag() {
    let r = voxtell(&args!["predict", "--help"]);
    assert!(r.ok, "{}", r.stderr);
    let missing: Vec<&str> = [
        "--input",
        "--output",
        "--model",
        "--prompts",
        "--jobs",
        "--embeddings",
        "--no-precomputed",
        "--list-embeddings",
        "--text-model",
        "--save-combined",
        "--output-type",
        "--no-overwrite",
        "--device",
        "--gpu",
        "--threads",
        "--step-size",
        "--accumulate",
        "--precision",
        "--max-memory",
        "--save-probabilities",
        "--statistics",
        "--preview",
        "--keep-largest",
        "--verbose",
        "--quiet",
    ]
    .into_iter()
    .filter(|f| !r.stdout.contains(&format!("{f} ")) && !r.stdout.contains(&format!("{f}\n")))
    .collect();
    assert!(missing.is_empty(), "predict --help lacks {missing:?}:\n{}", r.stdout);
}

// 10. The model's training range

/// The embedded demo folder (`assets/demo`).
fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo")
}

/// The image of phantom case 0 that `voxtell phantom` writes into `dir` with `settings`.
fn phantom_scan(dir: &Path, settings: &[&str]) -> PathBuf {
    let mut a = args!["phantom", dir, "--cases", "1", "--seed", "5"];
    a.extend(settings.iter().map(OsString::from));
    let r = voxtell(&a);
    assert!(r.ok, "{}", r.stderr);
    dir.join("Dataset001_Phantom/imagesTr/Dataset001_Phantom_000_0000.nii.gz")
}

#[test]
fn a_scan_outside_the_models_training_spacing_gets_one_warning_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let scans = tmp.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    // A default phantom (the demo model's settings: 4–5 mm in-plane, 5–6 mm slices) and one with
    // 6 mm voxels in-plane (coarse, so that the test runs fast).
    let inside = scans.join("inside.nii.gz");
    let outside = scans.join("outside.nii.gz");
    std::fs::copy(phantom_scan(&tmp.path().join("a"), &[]), &inside).unwrap();
    std::fs::copy(phantom_scan(&tmp.path().join("b"), &["--inplane-spacing", "6,6"]), &outside).unwrap();
    let out = tmp.path().join("out");
    let model = demo().join("model");
    let mut a =
        args!["predict", "-i", &inside, &outside, "-m", &model, "--embeddings", demo().join("bank.npz")];
    a.extend(args!["-o", &out, "-p", "liver"]);
    let r = voxtell(&a);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        entries(&out),
        set(&["inside_liver.nii.gz", "outside_liver.nii.gz"]),
        "segmented, not refused"
    );
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "one warning, for the case outside:\n{}", r.stderr);
    let [s, a, r_] = read(&outside).to_ras().unwrap().geometry.spacing();
    assert!((r_ - 6.0).abs() < 1e-3 && (a - 6.0).abs() < 1e-3 && (5.0..=6.0).contains(&s), "{s} {a} {r_}");
    let spacing = format!("{r_:.2} × {a:.2} mm in-plane, {s:.2} mm between slices");
    let w = warnings[0];
    assert!(w.starts_with("warning: outside: "), "{w}");
    assert!(w.contains(&spacing), "{w} lacks {spacing}");
    assert!(w.contains("in-plane 4–5 mm, slices 5–6 mm"), "{w}");
    assert!(w.contains(&model.join("voxtell.json").display().to_string()), "{w}");

    // Quiet: no warning.
    let mut a = args!["predict", "-i", &outside, "-m", &model, "--embeddings", demo().join("bank.npz")];
    a.extend(args!["-o", tmp.path().join("quiet"), "-p", "liver", "--quiet"]);
    let r = voxtell(&a);
    assert!(r.ok && r.stderr.is_empty(), "{}", r.stderr);
}
