//! `voxtell info` end to end: good inputs print their geometry, bad ones fail with the file named.

#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/io")
}

fn voxtell(args: &[&OsStr]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxtell")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn info_prints_geometry_of_nifti_and_dicom() {
    let nii = fixtures().join("nifti/orient/o13.nii.gz");
    let dcm = fixtures().join("dicom/mr_oblique");
    let (ok, out, err) =
        voxtell(&[OsStr::new("info"), OsStr::new("--ras"), nii.as_os_str(), dcm.as_os_str()]);
    assert!(ok, "{err}");
    assert!(out.contains("orientation: LSP"), "{out}");
    assert!(out.contains("shape:       5 × 6 × 7"), "{out}");
    assert!(out.contains("network layout (S, A, R): 6 × 7 × 5"), "{out}");
    assert!(out.contains("DICOM series") && out.contains("6 slices, MR"), "{out}");
}

#[test]
fn info_continues_past_a_bad_input_and_fails_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.nii.gz");
    std::fs::write(&bad, b"not a nifti").unwrap();
    let good = fixtures().join("nifti/orient/o00.nii.gz");
    let (ok, out, err) = voxtell(&[OsStr::new("info"), bad.as_os_str(), good.as_os_str()]);
    assert!(!ok);
    assert!(err.contains("broken.nii.gz"), "{err}");
    assert!(err.contains("1 of 2 inputs failed"), "{err}");
    assert!(out.contains("o00.nii.gz"), "the good input is still reported: {out}");
}

#[test]
fn info_names_the_series_when_a_folder_holds_two() {
    let folder = fixtures().join("dicom/two_series");
    let (ok, _, err) = voxtell(&[OsStr::new("info"), folder.as_os_str()]);
    assert!(!ok);
    assert!(err.contains("2 DICOM series") && err.contains("1.2.826.0.1.3680043.8.498.2.5"), "{err}");
    let (ok, out, err) = voxtell(&[
        OsStr::new("info"),
        OsStr::new("--series"),
        OsStr::new("1.2.826.0.1.3680043.8.498.2.6"),
        folder.as_os_str(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("9 × 8 × 3"), "{out}");
}

#[test]
fn convert_writes_a_safetensors_folder_and_reports_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("../fusion/cfg_b");
    let out = tmp.path().join("converted");
    let (ok, stdout, err) = voxtell(&[OsStr::new("convert"), model.as_os_str(), out.as_os_str()]);
    assert!(ok, "{err}");
    assert!(stdout.contains("wrote"));
    assert!(out.join("model.safetensors").exists());
    let (ok, _, err) = voxtell(&[OsStr::new("convert"), tmp.path().as_os_str(), out.as_os_str()]);
    assert!(!ok && err.contains("plans.json"), "{err}");
}

/// The tiny Qwen3 fixture model with its tokenizer unzipped, in `dir`.
fn tiny_text_model(dir: &Path) -> PathBuf {
    use std::io::Read;
    let src = fixtures().join("../text/qwen-tiny");
    let dst = dir.join("qwen-tiny");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut tok = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src.join("tokenizer.json.gz")).unwrap())
        .read_to_end(&mut tok)
        .unwrap();
    std::fs::write(dst.join("tokenizer.json"), tok).unwrap();
    dst
}

#[test]
fn embed_builds_extends_and_lists_banks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_text_model(tmp.path());
    let bank = tmp.path().join("bank.npz");
    let list = tmp.path().join("prompts.txt");
    std::fs::write(&list, "Left kidney\n\nspiculated nodule in the right upper lobe\n").unwrap();
    let (ok, out, err) = voxtell(&[
        OsStr::new("embed"),
        OsStr::new("-p"),
        OsStr::new("LIVER"),
        OsStr::new("--from-file"),
        list.as_os_str(),
        OsStr::new("-o"),
        bank.as_os_str(),
        OsStr::new("--text-model"),
        model.as_os_str(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("3 prompts, 8-wide"), "{out}");
    // The vectors equal the official embed path's (through the f16 bank).
    let reference = candle_core::safetensors::load(
        fixtures().join("../text/expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()["embeddings"]
        .to_vec2::<f32>()
        .unwrap();
    let b = voxtell::text::EmbeddingBank::read(&bank).unwrap();
    let liver = b.get("liver").unwrap();
    for (a, r) in liver.iter().zip(&reference[0]) {
        assert!((a - r).abs() <= 1e-3 * r.abs().max(1.0));
    }
    // Refuses to replace without --append; with it, extends (without needing the model for
    // prompts already present).
    let (ok, _, err) = voxtell(&[
        OsStr::new("embed"),
        OsStr::new("-p"),
        OsStr::new("x"),
        OsStr::new("-o"),
        bank.as_os_str(),
    ]);
    assert!(!ok && err.contains("--append"), "{err}");
    let (ok, _, err) = voxtell(&[
        OsStr::new("embed"),
        OsStr::new("-p"),
        OsStr::new("liver"),
        OsStr::new("-o"),
        bank.as_os_str(),
        OsStr::new("--append"),
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = voxtell(&[OsStr::new("embed"), OsStr::new("--list"), bank.as_os_str()]);
    assert!(ok && out.contains("left kidney") && out.contains("3 prompts"), "{out}");
    // A prompt the bank lacks, with no text model anywhere: the error names it.
    let out2 = tmp.path().join("other.npz");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_voxtell"))
        .args(["embed", "-p", "pancreas", "-o"])
        .arg(&out2)
        .env("VOXTELL_TEXT_MODEL", "")
        .env("HF_HOME", tmp.path().join("no-cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pancreas") && err.contains("no text model"), "{err}");
    assert!(!out2.exists());
}
