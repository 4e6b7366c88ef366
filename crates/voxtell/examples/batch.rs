//! Segment many scans with the batch API, the way `voxtell predict` does: jobs (a file, a
//! DICOM series folder or a volume in memory, each with its own prompts), the writers to run,
//! progress from the batch's events, and one JSON line per finished case.
//!
//! ```text
//! cargo run --release -p voxtell --example batch -- MODEL_DIR BANK.npz OUT_DIR SCAN...
//! cargo run --release -p voxtell --example batch   # the committed fixtures, see below
//! ```
//!
//! Without arguments it runs on the repository's fixtures: the tiny test model
//! `fixtures/fusion/cfg_a` (RANDOM weights: the masks are meaningless, only the plumbing is
//! real), the bank `fixtures/infer/predict/bank.npz` and the two scans of
//! `fixtures/infer/predict/images/` — one read from its file, one handed over in memory — writing
//! masks and statistics to `target/example-batch`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use voxtell::candle::{DType, Device};
use voxtell::fusion::ModelDir;
use voxtell::infer::{
    Batch, BatchOptions, Event, Job, MaskFiles, OutputWriter, PredictOptions, Predictor, StatisticsFile,
};
use voxtell::text::{EmbeddingBank, PromptVectors};

type Error = Box<dyn std::error::Error>;

/// The core: jobs in, one record per case out.
fn run(model: &Path, bank: &Path, out_dir: &Path, scans: &[PathBuf]) -> Result<bool, Error> {
    let prompts = vec!["liver".to_string(), "left kidney".to_string()];
    let mut jobs: Vec<Job> = scans.iter().map(|s| Job::from_path(s, prompts.clone())).collect();
    // A volume already in memory (as a server receives it) is a job too.
    if let Some(first) = scans.first() {
        let volume = Arc::new(voxtell::io::read(first)?);
        jobs.push(Job::from_volume("from_memory", volume, prompts.clone()));
    }
    let writers: Vec<Arc<dyn OutputWriter>> = vec![Arc::new(MaskFiles), Arc::new(StatisticsFile)];
    let batch =
        Batch::new(jobs, BatchOptions { skip_existing: false, ..BatchOptions::new(out_dir, writers) })?;

    // The prompts are embedded before the network is loaded, so an unknown one fails first.
    let vectors = PromptVectors::new(EmbeddingBank::read(bank)?, None, DType::F32, &Device::Cpu);
    let folder = ModelDir::open(model)?;
    let mut predictor =
        Predictor::open(&folder, vectors, PredictOptions::default(), &Device::Cpu, &batch.prompts())?;
    let records = predictor.run_batch(&batch, &|event| match event {
        Event::Planned { name, groups, .. } => eprintln!("{name}: {} prompt group(s)", groups.len()),
        Event::Tile { group, done, total, .. } => eprint!("\r  group {group}: tile {done}/{total}"),
        Event::Predicted { seconds, .. } => eprintln!(" — {seconds:.1} s"),
        _ => {}
    })?;
    for r in &records {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(records.iter().all(|r| r.error.is_none()))
}

// Arguments: `MODEL_DIR BANK.npz OUT_DIR SCAN...`, or the fixtures without arguments.
fn main() -> Result<(), Error> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let args = if args.is_empty() {
        println!(
            "no arguments: the committed fixtures, with a tiny model of RANDOM weights (meaningless masks)"
        );
        let root = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))?;
        let images = root.join("fixtures/infer/predict/images");
        vec![
            root.join("fixtures/fusion/cfg_a"),
            root.join("fixtures/infer/predict/bank.npz"),
            root.join("target/example-batch"),
            images.join("ct_oblique.nii.gz"),
            images.join("mr_small.nii.gz"),
        ]
    } else {
        args
    };
    let [model, bank, out_dir, scans @ ..] = args.as_slice() else {
        return Err("usage: batch MODEL_DIR BANK.npz OUT_DIR SCAN... (or no arguments)".into());
    };
    if scans.is_empty() {
        return Err("give at least one scan after OUT_DIR".into());
    }
    if !run(model, bank, out_dir, scans)? {
        return Err("some cases failed (see their records)".into());
    }
    Ok(())
}
