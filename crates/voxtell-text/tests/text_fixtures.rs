//! Prompt vectors and banks against the official code (`tools/gen_text_fixtures.py`): a tiny
//! random Qwen3 model with a real Qwen tokenizer, embedded through
//! `VoxTellPredictor.embed_text_prompts`, and banks the official loader reads.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;
use voxtell_text::{EmbeddingBank, QwenEmbedder, TextError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/text")
}

#[derive(Deserialize)]
struct Expected {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    prompt: String,
    lowercased: String,
    token_ids: Vec<u32>,
}

fn expected() -> Expected {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn reference_vectors() -> Vec<Vec<f32>> {
    let t = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    t["embeddings"].to_vec2().unwrap()
}

/// The tiny model folder with its tokenizer unzipped, in a temporary directory.
fn model_dir() -> tempfile::TempDir {
    let src = fixtures().join("qwen-tiny");
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut tok = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src.join("tokenizer.json.gz")).unwrap())
        .read_to_end(&mut tok)
        .unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), tok).unwrap();
    dir
}

fn check_vectors(ours: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    for (i, (a, b)) in ours.iter().zip(reference).enumerate() {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(diff <= 1e-4 * scale, "{what} prompt {i}: max |diff| {diff:e} vs max |ref| {scale:e}");
        assert!(dot / (na * nb) >= 0.99999, "{what} prompt {i}: cosine {}", dot / (na * nb));
    }
}

#[test]
fn token_ids_and_vectors_match_the_official_path() {
    let dir = model_dir();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let exp = expected();
    assert!(exp.items.len() >= 8);
    for item in &exp.items {
        assert_eq!(voxtell_text::prompt::normalize(&item.prompt), item.lowercased);
        assert_eq!(enc.token_ids(&item.prompt).unwrap(), item.token_ids, "{:?}", item.prompt);
    }
    let prompts: Vec<&str> = exp.items.iter().map(|i| i.prompt.as_str()).collect();
    let ours = enc.embed(&prompts).unwrap();
    check_vectors(&ours, &reference_vectors(), "f32");
}

#[test]
fn rope_theta_inside_rope_parameters_is_read_too() {
    let dir = model_dir();
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let theta = cfg.as_object_mut().unwrap().remove("rope_theta").unwrap();
    cfg["rope_parameters"] = serde_json::json!({"rope_theta": theta, "rope_type": "default"});
    std::fs::write(&path, cfg.to_string()).unwrap();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let exp = expected();
    let ours = enc.embed(&[exp.items[0].prompt.as_str()]).unwrap();
    check_vectors(&ours, &reference_vectors()[..1], "rope_parameters");
}

#[test]
fn weights_with_a_model_prefix_load_too() {
    let dir = model_dir();
    let path = dir.path().join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, v)| (format!("model.{k}"), v)).collect();
    candle_core::safetensors::save(&renamed, &path).unwrap();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let ours = enc.embed(&[expected().items[1].prompt.as_str()]).unwrap();
    check_vectors(&ours, &reference_vectors()[1..2], "model. prefix");
}

#[test]
fn official_banks_read_with_lowercased_keys() {
    let exp = expected();
    let reference = reference_vectors();
    for name in ["bank_official.npz", "bank_stored.npz"] {
        let bank = EmbeddingBank::read(fixtures().join(name)).unwrap();
        assert_eq!(bank.len(), exp.items.len(), "{name}");
        for (item, r) in exp.items.iter().zip(&reference) {
            let v = bank.get(&item.prompt).unwrap_or_else(|| panic!("{name}: {:?} missing", item.prompt));
            for (a, b) in v.iter().zip(r) {
                assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{name} {:?}", item.prompt);
            }
        }
        assert!(bank.get("not a prompt").is_none());
    }
}

#[test]
fn banks_round_trip_and_bad_banks_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bank = EmbeddingBank::read(fixtures().join("bank_official.npz")).unwrap();
    bank.insert("Läsion im Pankreas", &vec![0.5; bank.dim()]).unwrap();
    let out = tmp.path().join("bank.npz");
    bank.write(&out).unwrap();
    let back = EmbeddingBank::read(&out).unwrap();
    assert_eq!(back, bank);
    assert_eq!(back.get("LÄSION IM PANKREAS").unwrap(), vec![0.5; bank.dim()]);
    let err = bank.insert("x", &[1.0]).unwrap_err().to_string();
    assert!(err.contains("width"), "{err}");

    let err = EmbeddingBank::read(fixtures().join("bank_bad_lengths.npz")).unwrap_err();
    assert!(matches!(err, TextError::Bank { .. }) && err.to_string().contains("3 labels but 2"), "{err}");
    let junk = tmp.path().join("junk.npz");
    std::fs::write(&junk, b"not a zip").unwrap();
    assert!(EmbeddingBank::read(&junk).unwrap_err().to_string().contains("junk.npz"));
}

#[test]
fn broken_model_folders_are_clear_errors() {
    let dir = model_dir();
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let dir = model_dir();
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["model_type"] = serde_json::json!("bert");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("bert") && err.contains("config.json"), "{err}");

    let dir = model_dir();
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("model-00001-of-00002.safetensors"),
    )
    .unwrap();
    let index = serde_json::json!({"weight_map": {"embed_tokens.weight": "model-00001-of-00002.safetensors",
        "norm.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let err = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors") && err.contains("missing"), "{err}");
}
