//! Prompt vectors and banks against the official code (`tools/gen_text_fixtures.py`): a tiny
//! random Qwen3 model with a real Qwen tokenizer, embedded through
//! `VoxTellPredictor.embed_text_prompts`, and banks the official loader reads.

#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device};
use voxtell_text::{EmbedMode, EmbeddingBank, QwenEmbedder, TextError};

use common::{check_close, check_cosine, fixtures};

type Expected = common::Expected<common::Item<common::NoExtra>>;

fn expected() -> Expected {
    common::expected(fixtures().join("expected.json"))
}

/// The official vectors: `embeddings` (one left-padded batch) or `embeddings_single` (one
/// unpadded call per prompt).
fn official(name: &str) -> Vec<Vec<f32>> {
    let t = candle_core::safetensors::load(fixtures().join("expected.safetensors"), &Device::Cpu).unwrap();
    t[name].to_vec2().unwrap()
}

fn reference_vectors() -> Vec<Vec<f32>> {
    official("embeddings")
}

/// The tiny model folder with its tokenizer unzipped, in a temporary directory.
fn model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    voxtell_testutil::unpack_qwen_tiny(dir.path());
    dir
}

/// Within 1e-4 of the reference's range and at a cosine of at least 0.99999.
fn check_vectors(ours: &[Vec<f32>], reference: &[Vec<f32>], what: &str) {
    check_close(ours, reference, 1e-4, what);
    check_cosine(ours, reference, what);
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
    let prompts = exp.prompts();
    let ours = enc.embed(&prompts).unwrap();
    check_vectors(&ours, &reference_vectors(), "f32");
    let batched = enc.embed_with(&prompts, EmbedMode::Batched).unwrap();
    assert_eq!(batched, ours, "embed is the batched mode");
}

#[test]
fn one_per_prompt_matches_the_official_vectors_too() {
    let dir = model_dir();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let exp = expected();
    let prompts = exp.prompts();
    let ours = enc.embed_with(&prompts, EmbedMode::OnePerPrompt).unwrap();
    check_vectors(&ours, &official("embeddings_single"), "one per prompt vs official single");
    check_vectors(&ours, &official("embeddings"), "one per prompt vs official batch");
    check_vectors(
        &enc.embed(&prompts).unwrap(),
        &official("embeddings_single"),
        "batched vs official single",
    );
}

/// Our Qwen3 forward against candle-transformers' (an independent implementation), one prompt
/// at a time.
#[test]
fn own_forward_matches_candle_transformers_qwen3() {
    use candle_core::IndexOp;
    let dir = model_dir();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let cfg = voxtell_text::qwen::read_config(dir.path()).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .rename_f(|name| name.strip_prefix("model.").unwrap_or(name).to_string());
    let model = candle_transformers::models::qwen3::Model::new(&cfg, vb).unwrap();
    let exp = expected();
    let prompts = exp.prompts();
    let theirs: Vec<Vec<f32>> = prompts
        .iter()
        .map(|p| {
            let ids = enc.token_ids(p).unwrap();
            let input = candle_core::Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let hidden = model.clone().forward(&input, 0).unwrap();
            hidden.i((0, ids.len() - 1)).unwrap().to_vec1::<f32>().unwrap()
        })
        .collect();
    for mode in [EmbedMode::OnePerPrompt, EmbedMode::Batched] {
        check_close(
            &enc.embed_with(&prompts, mode).unwrap(),
            &theirs,
            1e-5,
            &format!("{mode:?} vs candle-transformers"),
        );
    }
}

/// Token sequences of 1 to 200 tokens in a shuffled order, 41 in all (two batches of up to 32),
/// with duplicates inside a batch and across batches.
fn mixed_sequences() -> Vec<Vec<u32>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as u32
    };
    let lens = [
        1, 150, 2, 37, 200, 1, 5, 120, 24, 3, 64, 9, 101, 17, 1, 48, 33, 7, 180, 26, 11, 90, 2, 55, 131, 6,
        40, 28, 8, 75, 19, 160, 4, 30, 12, 111,
    ];
    let mut rows: Vec<Vec<u32>> = lens
        .iter()
        .map(|&n| {
            // Real sequences end with <|endoftext|>; single tokens are random ones.
            let mut row: Vec<u32> = (0..n).map(|_| next() % 151_643).collect();
            if n > 1 {
                row[n - 1] = 151_643;
            }
            row
        })
        .collect();
    // Duplicates: of a 1-token, a long and a mid-length row, placed far from their originals.
    for (at, of) in [(3, 5), (20, 1), (36, 24), (38, 4), (40, 0)] {
        let dup = rows[of].clone();
        rows.insert(at.min(rows.len()), dup);
    }
    rows
}

#[test]
fn batched_equals_one_per_prompt_across_lengths_batches_and_duplicates() {
    let dir = model_dir();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let rows = mixed_sequences();
    assert!(rows.len() > 32 && rows.iter().any(|r| r.len() == 1) && rows.iter().any(|r| r.len() >= 100));
    let duplicates = rows.iter().enumerate().filter(|(i, r)| rows[..*i].contains(r)).count();
    assert_eq!(duplicates, 5);
    let one = enc.embed_token_ids(&rows, EmbedMode::OnePerPrompt).unwrap();
    let batched = enc.embed_token_ids(&rows, EmbedMode::Batched).unwrap();
    check_close(&batched, &one, 1e-5, "batched token ids vs one per prompt");
    // The input order: distinct sequences have distinct vectors, duplicates equal ones.
    for i in 0..rows.len() {
        for j in 0..rows.len() {
            let same = batched[i] == batched[j];
            assert_eq!(same, rows[i] == rows[j], "rows {i} and {j}");
        }
    }

    // Prompts through the tokenizer: the fixture's (short and 115 tokens), one repeated, 33+
    // in all, in an order unlike their lengths.
    let exp = expected();
    let mut prompts: Vec<String> = exp.items.iter().map(|i| i.prompt.clone()).collect();
    prompts.extend((0..22).map(|i| format!("lesion number {i} {}", "in the liver ".repeat(i % 9))));
    prompts.insert(7, prompts[5].clone());
    prompts.push(prompts[0].clone());
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    assert!(prompts.len() >= 33);
    let one = enc.embed_with(&prompts, EmbedMode::OnePerPrompt).unwrap();
    let batched = enc.embed(&prompts).unwrap();
    check_close(&batched, &one, 1e-5, "batched prompts vs one per prompt");
    assert_eq!(batched[7], batched[5]);
    assert_eq!(batched[prompts.len() - 1], batched[0]);
    let reference = reference_vectors();
    check_vectors(&batched[..7], &reference[..7], "prompts 0..7 in a larger call");
    check_vectors(&batched[8..11], &reference[7..], "prompts 7.. in a larger call");
}

#[test]
fn long_prompts_are_truncated_to_8192_tokens_and_empty_sequences_rejected() {
    let dir = model_dir();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let ids = enc.token_ids(&"liver ".repeat(10_000)).unwrap();
    assert_eq!(ids.len(), voxtell_text::qwen::MAX_TOKENS);
    assert_eq!(*ids.last().unwrap(), 151_643, "the appended <|endoftext|> survives truncation");
    let err = enc.embed_token_ids(&[vec![1, 2], vec![]], EmbedMode::Batched).unwrap_err();
    assert!(err.to_string().contains("#1"), "{err}");
    assert!(enc.embed_token_ids(&[], EmbedMode::Batched).unwrap().is_empty());
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

/// Half precision (the official GPU path runs bf16): padded batches stay finite and close to the
/// f32 reference.
#[test]
fn half_precision_batches_stay_close() {
    let dir = model_dir();
    let exp = expected();
    let prompts = exp.prompts();
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|v| v * v).sum::<f32>().sqrt() * b.iter().map(|v| v * v).sum::<f32>().sqrt())
    };
    for (dtype, min_cos) in [(DType::BF16, 0.999), (DType::F16, 0.9999)] {
        let enc = QwenEmbedder::load(dir.path(), dtype, &Device::Cpu).unwrap();
        for mode in [EmbedMode::Batched, EmbedMode::OnePerPrompt] {
            let ours = enc.embed_with(&prompts, mode).unwrap();
            for (i, (a, r)) in ours.iter().zip(reference_vectors()).enumerate() {
                assert!(a.iter().all(|v| v.is_finite()), "{dtype:?} {mode:?} #{i}");
                let c = cosine(a, &r);
                assert!(c >= min_cos, "{dtype:?} {mode:?} #{i}: cosine {c}");
            }
        }
    }
}
