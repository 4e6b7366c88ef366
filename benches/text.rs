//! Criterion bench: prompts per second through the text encoder, on the tiny Qwen3 fixture
//! model (`fixtures/text/qwen-tiny`, with the real Qwen tokenizer). The real model's figures are
//! measured by hand (docs/performance.md).
//!
//! ```text
//! cargo bench -p voxtell --bench text
//! ```

use std::io::Read;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use voxtell::candle::{DType, Device};
use voxtell::text::QwenEmbedder;

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

fn embed(c: &mut Criterion) {
    let dir = tiny_model();
    let enc = QwenEmbedder::load(dir.path(), DType::F32, &Device::Cpu).expect("load");
    let prompts = ["liver", "left kidney", "spiculated nodule in the right upper lobe", "urinary bladder"];
    let mut group = c.benchmark_group("text");
    group.throughput(Throughput::Elements(prompts.len() as u64));
    group.bench_function("tiny_qwen3_4_prompts", |b| b.iter(|| enc.embed(&prompts).expect("embed")));
    group.finish();
}

criterion_group!(benches, embed);
criterion_main!(benches);
