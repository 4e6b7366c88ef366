//! `voxtell predict` embedding prompts the bank lacks with a text model (the tiny Qwen3 of
//! fixtures/text, 8-wide vectors), and refusing vectors of the wrong width.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use voxtell::candle::{DType, Device};
use voxtell::fusion::Checkpoint;

use voxtell_testutil::fixtures;

fn voxtell<S: AsRef<OsStr>>(args: &[S]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxtell")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

/// The small cfg_a model with its text projection cut to `width`-wide prompt vectors, as a
/// converted folder (plans.json + model.safetensors).
fn model_with_text_width(dir: &Path, width: usize) {
    let src = fixtures().join("fusion/cfg_a");
    let ckpt = Checkpoint::open(src.join("fold_0/checkpoint_final.pth")).unwrap();
    let mut tensors = HashMap::new();
    for key in ckpt.keys() {
        if voxtell::fusion::checkpoint::is_alias(key) {
            continue;
        }
        let mut t = ckpt.tensor(key, DType::F32, &Device::Cpu).unwrap();
        if key == "project_text_embed.0.weight" {
            // Keep the first `width` input columns, scaled so the hidden layer keeps its range.
            let scale = (t.dim(1).unwrap() as f64 / width as f64).sqrt();
            t = (t.narrow(1, 0, width).unwrap() * scale).unwrap();
        }
        tensors.insert(key.to_string(), t);
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(src.join("plans.json"), dir.join("plans.json")).unwrap();
    Checkpoint::from_tensors(tensors).save_safetensors(dir.join("model.safetensors")).unwrap();
}

/// The tiny Qwen3 folder with its tokenizer unpacked (it is committed gzipped).
fn qwen_dir(tmp: &Path) -> PathBuf {
    let dst = tmp.join("qwen-tiny");
    voxtell_testutil::unpack_qwen_tiny(&dst);
    dst
}

/// `predict` of the fixture image `mr_small` with the model folder `model`, prompt vectors
/// from `vectors` (`--embeddings BANK`, or `--no-precomputed --text-model DIR`), into `out`.
fn predict_args(model: &Path, vectors: &[&str], prompts: &[&str], out: &Path) -> Vec<String> {
    let image = fixtures().join("infer/predict/images/mr_small.nii.gz");
    let mut a: Vec<String> =
        ["predict", "-i", image.to_str().unwrap(), "-m", model.to_str().unwrap()].map(String::from).into();
    a.extend(vectors.iter().map(|s| s.to_string()));
    a.push("-p".into());
    a.extend(prompts.iter().map(|s| s.to_string()));
    a.extend(["-o".to_string(), out.to_str().unwrap().to_string()]);
    a
}

#[test]
fn prompts_missing_from_the_bank_are_embedded_with_the_text_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    model_with_text_width(&model, 8);
    let qwen = qwen_dir(tmp.path());
    let out = tmp.path().join("out");
    let text_model = ["--no-precomputed", "--text-model", qwen.to_str().unwrap()];
    let (ok, err) = voxtell(&predict_args(&model, &text_model, &["Liver", "left kidney"], &out));
    assert!(ok, "{err}");
    for name in ["mr_small_Liver.nii.gz", "mr_small_left_kidney.nii.gz"] {
        let mask = voxtell::io::read_nifti(out.join(name)).unwrap();
        assert_eq!(mask.data.shape(), &[27, 31, 23], "{name}");
    }

    // Without a text model the same prompts are an error that names them, before any output.
    let out2 = tmp.path().join("out2");
    let missing = tmp.path().join("no-such-text-model");
    let text_model = ["--no-precomputed", "--text-model", missing.to_str().unwrap()];
    let (ok, err) = voxtell(&predict_args(&model, &text_model, &["Liver"], &out2));
    assert!(!ok);
    assert!(err.contains("no-such-text-model"), "{err}");
    assert!(std::fs::read_dir(&out2).map(|d| d.count() == 0).unwrap_or(true));
}

#[test]
fn a_bank_or_text_model_of_another_width_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // cfg_a takes 24-wide vectors; the tiny Qwen gives 8-wide ones.
    let qwen = qwen_dir(tmp.path());
    let text_model = ["--no-precomputed", "--text-model", qwen.to_str().unwrap()];
    let (ok, err) = voxtell(&predict_args(&fixtures().join("fusion/cfg_a"), &text_model, &["liver"], &out));
    assert!(!ok);
    assert!(err.contains("8-wide") && err.contains("24-wide"), "{err}");
    // An 8-wide model with the 24-wide bank of the fixtures.
    let model = tmp.path().join("model");
    model_with_text_width(&model, 8);
    let bank = fixtures().join("infer/predict/bank.npz");
    let (ok, err) =
        voxtell(&predict_args(&model, &["--embeddings", bank.to_str().unwrap()], &["liver"], &out));
    assert!(!ok);
    assert!(err.contains("24-wide") && err.contains("8-wide"), "{err}");
}

/// `voxtell ARGS` with the Hugging Face cache at `hf_home` and nothing from the environment.
fn voxtell_with_cache<S: AsRef<OsStr>>(args: &[S], hf_home: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxtell"))
        .args(args)
        .env("HF_HOME", hf_home)
        .env("VOXTELL_MODEL", "")
        .env("VOXTELL_EMBEDDINGS", "")
        .env("VOXTELL_TEXT_MODEL", "")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_text_model_of_another_kind_is_refused_when_named_and_passed_over_when_only_cached() {
    let tmp = tempfile::tempdir().unwrap();
    // cfg_a converted, its voxtell.json naming a mean-pooled, normalised 24-wide encoder.
    let model = tmp.path().join("model");
    let (ok, err) =
        voxtell(&["convert", fixtures().join("fusion/cfg_a").to_str().unwrap(), model.to_str().unwrap()]);
    assert!(ok, "{err}");
    let meta_path = model.join("voxtell.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["text_encoder"]["id"] = "sentence-transformers/all-MiniLM-L6-v2".into();
    meta["text_encoder"]["pooling"] = "mean".into();
    meta["text_encoder"]["normalize"] = true.into();
    std::fs::write(&meta_path, serde_json::to_string_pretty(&meta).unwrap()).unwrap();
    // The tiny Qwen3 (8-wide, last-token pooling) where the Hugging Face cache keeps
    // Qwen/Qwen3-Embedding-4B.
    let hf_home = tmp.path().join("hf");
    let repo = hf_home.join("hub/models--Qwen--Qwen3-Embedding-4B");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "r1").unwrap();
    std::fs::create_dir_all(repo.join("snapshots")).unwrap();
    std::fs::rename(qwen_dir(tmp.path()), repo.join("snapshots/r1")).unwrap();
    let bank = fixtures().join("infer/predict/bank.npz");
    let run = |extra: &[&str], out: &Path| {
        let mut a = predict_args(&model, &["--embeddings", bank.to_str().unwrap()], &["Liver"], out);
        a.push("-v".into());
        a.extend(extra.iter().map(|s| s.to_string()));
        voxtell_with_cache(&a, &hf_home)
    };
    // Only found in the cache: passed over, with a note in verbose mode; the bank has the prompt.
    let out = tmp.path().join("out");
    let (ok, err) = run(&[], &out);
    assert!(ok, "{err}");
    assert!(err.contains("not using the cached text model"), "{err}");
    assert!(out.join("mr_small_Liver.nii.gz").is_file());
    // Named: an error saying what differs, before any output.
    let named = repo.join("snapshots/r1");
    let out = tmp.path().join("out-named");
    let (ok, err) = run(&["--text-model", named.to_str().unwrap()], &out);
    assert!(!ok);
    assert!(err.contains("pooling") && err.contains("all-MiniLM-L6-v2"), "{err}");
    assert!(std::fs::read_dir(&out).map(|d| d.count() == 0).unwrap_or(true));
}
