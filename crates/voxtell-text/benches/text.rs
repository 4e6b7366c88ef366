//! Criterion bench: prompts per second through the text encoder, on the tiny Qwen3 fixture
//! model (`fixtures/text/qwen-tiny`, hidden 8, with the real Qwen tokenizer) and on a wider
//! random Qwen3 (`mid`: hidden 512, 2 layers, FFN 1536, the same tokenizer): 4 short prompts,
//! and 64 distinct prompts — of mixed lengths (about 28 to 118 tokens) or of similar lengths (35
//! or 36) — in left-padded batches (`EmbedMode::Batched`, the default) against one forward per
//! prompt (`EmbedMode::OnePerPrompt`); and the tokenizer alone. The real model's figures are
//! measured by hand (docs/performance.md).
//!
//! ```text
//! cargo bench -p voxtell-text --bench text
//! ```

use std::io::Read;

use candle_core::{DType, Device};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use voxtell_text::{EmbedMode, QwenEmbedder};

fn tiny_model() -> tempfile::TempDir {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/text/qwen-tiny");
    let dir = tempfile::tempdir().expect("temp dir");
    for f in ["config.json", "model.safetensors", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).expect("copy fixture");
    }
    let mut tok = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src.join("tokenizer.json.gz")).expect("tokenizer"))
        .read_to_end(&mut tok)
        .expect("gunzip");
    std::fs::write(dir.path().join("tokenizer.json"), tok).expect("write tokenizer");
    dir
}

/// 64 distinct prompts, about 28 to 118 tokens each once wrapped (uniformly spread).
fn mixed_prompts() -> Vec<String> {
    let organs =
        ["liver", "left kidney", "spleen", "pancreas", "aorta", "right lung", "bladder", "c7 vertebra"];
    (0..64)
        .map(|i| {
            let detail = "with peripheral nodular enhancement ".repeat((i * 7) % 19);
            format!("lesion {i} in the {} {detail}", organs[i % organs.len()])
        })
        .collect()
}

/// 64 distinct prompts of 35 or 36 tokens once wrapped.
fn similar_prompts() -> Vec<String> {
    (0..64).map(|i| format!("lesion {i} in the liver with peripheral nodular enhancement")).collect()
}

/// Batched against one forward per prompt, on the mixed and on the similar prompts.
fn modes(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    model: &str,
    enc: &QwenEmbedder,
) {
    for (set, prompts) in [("mixed", mixed_prompts()), ("similar", similar_prompts())] {
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        group.throughput(Throughput::Elements(prompts.len() as u64));
        for (mode_name, mode) in
            [("batched", EmbedMode::Batched), ("one_per_prompt", EmbedMode::OnePerPrompt)]
        {
            group.bench_function(format!("{model}_64_{set}_{mode_name}"), |b| {
                b.iter(|| enc.embed_with(&prompts, mode).expect("embed"))
            });
        }
    }
}

fn embed(c: &mut Criterion) {
    let dir = tiny_model();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).expect("load");
    let prompts = ["liver", "left kidney", "spiculated nodule in the right upper lobe", "urinary bladder"];
    let mut group = c.benchmark_group("text");
    group.throughput(Throughput::Elements(prompts.len() as u64));
    group.bench_function("tiny_qwen3_4_prompts", |b| b.iter(|| enc.embed(&prompts).expect("embed")));
    modes(&mut group, "tiny_qwen3", &enc);
    // What the tokenizer alone costs of the above.
    let mixed = mixed_prompts();
    group.throughput(Throughput::Elements(mixed.len() as u64));
    group.bench_function("tiny_qwen3_64_mixed_tokenize_only", |b| {
        b.iter(|| mixed.iter().map(|p| enc.token_ids(p).expect("tokenize").len()).sum::<usize>())
    });
    group.finish();

    // Where the matrix products dominate: a wider random Qwen3.
    let dir = mid_model();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).expect("load");
    let mut group = c.benchmark_group("text");
    group.sample_size(10);
    modes(&mut group, "mid_qwen3", &enc);
    group.finish();
}

/// The tiny model's folder with random weights of a wider Qwen3 (hidden 512, 2 layers, 8 query
/// and 2 key/value heads of 64, FFN 1536; the embedding table covers the whole vocabulary).
fn mid_model() -> tempfile::TempDir {
    let dir = tiny_model();
    let (vocab, hidden, heads, kv_heads, head_dim, ffn, layers) = (151_669, 512, 8, 2, 64, 1536, 2);
    let config = serde_json::json!({
        "architectures": ["Qwen3Model"], "model_type": "qwen3", "vocab_size": vocab,
        "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0, "attention_bias": false, "tie_word_embeddings": false,
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    let rand = |shape: &[usize]| {
        candle_core::Tensor::randn(0f32, 0.05, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F16))
            .expect("random weights")
    };
    let ones = |n: usize| candle_core::Tensor::ones(n, DType::F16, &Device::Cpu).expect("ones");
    let mut w = std::collections::HashMap::new();
    w.insert("embed_tokens.weight".to_string(), rand(&[vocab, hidden]));
    w.insert("norm.weight".to_string(), ones(hidden));
    for l in 0..layers {
        let p = format!("layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [heads * head_dim, hidden]),
            ("self_attn.k_proj", [kv_heads * head_dim, hidden]),
            ("self_attn.v_proj", [kv_heads * head_dim, hidden]),
            ("self_attn.o_proj", [hidden, heads * head_dim]),
            ("mlp.gate_proj", [ffn, hidden]),
            ("mlp.up_proj", [ffn, hidden]),
            ("mlp.down_proj", [hidden, ffn]),
        ] {
            w.insert(format!("{p}.{name}.weight"), rand(&shape));
        }
        for (name, n) in [
            ("self_attn.q_norm", head_dim),
            ("self_attn.k_norm", head_dim),
            ("input_layernorm", hidden),
            ("post_attention_layernorm", hidden),
        ] {
            w.insert(format!("{p}.{name}.weight"), ones(n));
        }
    }
    candle_core::safetensors::save(&w, dir.path().join("model.safetensors")).expect("weights");
    dir
}

criterion_group!(benches, embed);
criterion_main!(benches);
