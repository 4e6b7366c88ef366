//! Segment a scan from text prompts with the crate API: read the scan and an embedding bank,
//! load the model, predict with a progress callback, write one mask per prompt.
//!
//! ```text
//! cargo run --release -p voxtell --example predict -- MODEL_DIR BANK.npz SCAN OUT_DIR PROMPT...
//! cargo run --release -p voxtell --example predict   # the committed fixtures, see below
//! ```
//!
//! Without arguments it runs on the repository's fixtures: the tiny test model
//! `fixtures/fusion/cfg_a` (RANDOM weights: the masks are meaningless, only the plumbing is
//! real), the bank `fixtures/infer/predict/bank.npz`, the scan
//! `fixtures/infer/predict/images/ct_oblique.nii.gz` and the prompts "liver" and "left kidney",
//! writing to `target/example-predict`. For real masks pass the released VoxTell model folder
//! and a bank of its prompts' Qwen3-Embedding-4B vectors.

use std::path::Path;

use voxtell::candle::{DType, Device};
use voxtell::infer::{PredictOptions, Predictor};
use voxtell::io::WriteOptions;
use voxtell::text::{EmbeddingBank, PromptVectors};

type Error = Box<dyn std::error::Error>;

/// The core: everything a program needs to segment a scan from text prompts.
fn segment(model: &Path, bank: &Path, scan: &Path, out_dir: &Path, prompts: &[&str]) -> Result<(), Error> {
    let volume = voxtell::io::read(scan)?;
    let vectors = PromptVectors::new(EmbeddingBank::read(bank)?, None, DType::F32, &Device::Cpu);
    let mut predictor = Predictor::from_dir(model, vectors, PredictOptions::default(), &Device::Cpu)?;
    let masks = predictor.predict_with_progress(&volume, prompts, |done, total| {
        eprint!("\rtile {done}/{total}");
        true // false would cancel
    })?;
    eprintln!();
    for (i, prompt) in prompts.iter().enumerate() {
        let path = out_dir.join(format!("{}.nii.gz", prompt.replace(' ', "_")));
        masks.write_mask(i, &path, WriteOptions::default())?;
        let voxels = masks.mask(i)?.iter().filter(|&&v| v != 0).count();
        println!("{prompt:?}: {voxels} voxels -> {}", path.display());
    }
    Ok(())
}

// Argument handling: `MODEL_DIR BANK.npz SCAN OUT_DIR PROMPT...`, or the fixtures without arguments.
fn main() -> Result<(), Error> {
    voxtell_alloc::tune_allocator();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        println!(
            "no arguments: the committed fixtures, with a tiny model of RANDOM weights (meaningless masks)"
        );
        let root = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))?;
        let fixture = |p: &str| root.join(p).display().to_string();
        args = vec![
            fixture("fixtures/fusion/cfg_a"),
            fixture("fixtures/infer/predict/bank.npz"),
            fixture("fixtures/infer/predict/images/ct_oblique.nii.gz"),
            fixture("target/example-predict"),
            "liver".into(),
            "left kidney".into(),
        ];
    }
    let [model_dir, bank, scan, out_dir, prompts @ ..] = args.as_slice() else {
        return Err("usage: predict MODEL_DIR BANK.npz SCAN OUT_DIR PROMPT... (or no arguments)".into());
    };
    if prompts.is_empty() {
        return Err("give at least one prompt after OUT_DIR".into());
    }
    std::fs::create_dir_all(out_dir)?;
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    segment(Path::new(model_dir), Path::new(bank), Path::new(scan), Path::new(out_dir), &prompts)
}
