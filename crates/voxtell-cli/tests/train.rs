//! `voxtell train` argument and set-up errors (whole runs are tested in voxtell-train).

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn voxtell(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxtell")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn train_needs_a_config_or_a_run_to_resume() {
    let (ok, err) = voxtell(&["train"]);
    assert!(!ok);
    assert!(err.contains("--config") || err.contains("--resume"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-run");
    let (ok, err) = voxtell(&["train", "--resume", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("state.json") && err.contains("no-run"), "{err}");
}

#[test]
fn a_bad_config_is_reported_with_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("train.toml");
    std::fs::write(&path, "output = \"x\"\ndatasets = []\nvocabulary = \"v\"\nbank = \"b\"\nplans = \"p\"\n")
        .unwrap();
    let (ok, err) = voxtell(&["train", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("train.toml") && err.contains("no datasets"), "{err}");
    std::fs::write(&path, "output = 3\n").unwrap();
    let (ok, err) = voxtell(&["train", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("train.toml"), "{err}");
    let missing = tmp.path().join("missing.toml");
    let (ok, err) = voxtell(&["train", "--config", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("missing.toml"), "{err}");
}
