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

#[test]
fn phantom_writes_a_dataset_vocabulary_and_prompt_list() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let o = out.to_str().unwrap();
    let args =
        ["phantom", o, "--cases", "2", "--seed", "3", "--inplane-spacing", "6,7", "--slice-spacing", "7,8"];
    let args = [&args[..], &["--lesion-radius", "12,14", "--lesion-fraction", "0.5"]].concat();
    let args = [&args[..], &["--lesion-contrast", "50,60", "--noise-sd", "4,9"]].concat();
    let (ok, err) = voxtell(&args);
    assert!(ok, "{err}");
    let ds = out.join("Dataset001_Phantom");
    for f in ["imagesTr/Dataset001_Phantom_000_0000.nii.gz", "labelsTr/Dataset001_Phantom_001.nii.gz"] {
        assert!(ds.join(f).is_file(), "{f}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ds.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(json["phantom"]["options"]["lesion_radius_mm"], serde_json::json!([12.0, 14.0]));
    assert_eq!(json["phantom"]["options"]["lesion_case_fraction"], serde_json::json!(0.5));
    assert_eq!(json["phantom"]["options"]["lesion_contrast_hu"], serde_json::json!([50.0, 60.0]));
    assert_eq!(json["phantom"]["options"]["noise_sd_hu"], serde_json::json!([4.0, 9.0]));
    // Every vocabulary prompt and negative, then the held-out paraphrases, once each.
    let vocab: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vocabulary.json")).unwrap()).unwrap();
    let in_vocab: usize =
        vocab["Dataset001_Phantom"].as_object().unwrap().values().map(|v| v.as_array().unwrap().len()).sum();
    let prompts = std::fs::read_to_string(out.join("prompts.txt")).unwrap();
    let lines: Vec<&str> = prompts.lines().collect();
    assert_eq!(lines.len(), in_vocab + voxtell::phantom::paraphrases().len());
    assert_eq!(lines.iter().collect::<std::collections::BTreeSet<_>>().len(), lines.len());
    // A bad range is refused before anything is written.
    let bad = tmp.path().join("bad");
    let (ok, err) = voxtell(&["phantom", bad.to_str().unwrap(), "--lesion-radius", "30,10"]);
    assert!(!ok);
    assert!(err.contains("lesion_radius_mm"), "{err}");
    assert!(!bad.join("Dataset001_Phantom/dataset.json").exists());
    for fraction in ["1.5", "-0.1", "NaN"] {
        let flag = format!("--lesion-fraction={fraction}");
        let (ok, err) = voxtell(&["phantom", bad.to_str().unwrap(), &flag]);
        assert!(!ok, "{fraction}");
        assert!(err.contains("lesion_case_fraction"), "{fraction}: {err}");
        assert!(!bad.join("Dataset001_Phantom/dataset.json").exists());
    }
    for (flag, value, field) in [
        ("--lesion-contrast", "60,40", "lesion_contrast_hu"),
        ("--lesion-contrast", "-5,10", "lesion_contrast_hu"),
        ("--lesion-contrast", "NaN,10", "lesion_contrast_hu"),
        ("--noise-sd", "-1,5", "noise_sd_hu"),
        ("--noise-sd", "5,inf", "noise_sd_hu"),
    ] {
        let arg = format!("{flag}={value}");
        let (ok, err) = voxtell(&["phantom", bad.to_str().unwrap(), &arg]);
        assert!(!ok, "{arg}");
        assert!(err.contains(field), "{arg}: {err}");
        assert!(!bad.join("Dataset001_Phantom/dataset.json").exists());
    }
    let (ok, err) = voxtell(&["phantom", bad.to_str().unwrap(), "--noise-sd", "5"]);
    assert!(!ok);
    assert!(err.contains("--noise-sd takes two numbers"), "{err}");
}

/// `assets/demo/phantom.json`: the generator settings of the demo model's training data.
fn demo_settings() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/phantom.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn phantom_defaults_are_the_demo_models_training_settings() {
    // Without flags, every setting but the number of cases and the seed is the demo's.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    let (ok, err) = voxtell(&["phantom", out.to_str().unwrap(), "--cases", "1", "--seed", "4242"]);
    assert!(ok, "{err}");
    assert!(!err.contains("note:"), "default settings are the demo's: {err}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("Dataset001_Phantom/dataset.json")).unwrap())
            .unwrap();
    let mut written = json["phantom"]["options"].clone();
    let mut demo = demo_settings();
    for v in [&mut written, &mut demo] {
        let o = v.as_object_mut().unwrap();
        o.remove("cases");
        o.remove("seed");
    }
    assert_eq!(written, demo);

    // A range reaching outside the demo's is made, with a note naming the flag and the demo's range.
    let finer = tmp.path().join("finer");
    let args = ["phantom", finer.to_str().unwrap(), "--cases", "1", "--inplane-spacing", "2,3"];
    let (ok, err) = voxtell(&[&args[..], &["--lesion-radius", "16,20"]].concat());
    assert!(ok, "{err}");
    assert!(finer.join("Dataset001_Phantom/dataset.json").is_file());
    assert!(err.contains("--inplane-spacing 2,3 (the demo model's: 4–5 mm)"), "{err}");
    assert!(!err.contains("--lesion-radius"), "16–20 mm lies within the demo's 15–28 mm: {err}");
}

#[test]
fn phantom_help_gives_the_defaults_and_marks_the_demo_models_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_voxtell")).args(["phantom", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(out.status.success(), "{help}");
    let d = voxtell::phantom::PhantomOptions::default();
    for (flag, r) in [
        ("--inplane-spacing", d.inplane_spacing_mm),
        ("--slice-spacing", d.slice_spacing_mm),
        ("--lesion-radius", d.lesion_radius_mm),
        ("--lesion-contrast", d.lesion_contrast_hu),
        ("--noise-sd", d.noise_sd_hu),
    ] {
        let start = help.find(&format!("{flag} <MIN,MAX>")).unwrap_or_else(|| panic!("{flag}: {help}"));
        let text = &help[start..];
        assert!(text.contains(&format!("[default: {},{}]", r[0], r[1])), "{flag}: {text}");
        assert!(text.contains(&format!("outside {}–{}", r[0], r[1])), "{flag}: {text}");
    }
    assert!(help.contains(&format!("[default: {}]", d.lesion_case_fraction)), "{help}");
    assert!(help.contains("outside what the demo model was trained on"), "{help}");
}
