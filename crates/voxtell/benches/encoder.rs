//! Time the full-size ResEncL encoder (VoxTell's: features 32…320, blocks 1,3,4,6,6,6) on one
//! patch with random weights, and report its peak resident memory.
//!
//! ```text
//! cargo bench -p voxtell --bench encoder -- PATCH [REPEATS=1]     # PATCH 192: the full size
//! ```
//! Without arguments it prints this usage and measures nothing (so `cargo bench` alone does not
//! start a full-size run). Compare with
//! `tools/.venv/bin/python benches/pytorch_bench.py --only encoder`.

mod common;

use std::time::Instant;

use common::{PLAN, args_or_usage, peak_rss_mib};
use voxtell::candle::{DType, Device, Tensor};
use voxtell::fusion::FreshWeights;
use voxtell::vision::{ArchKwargs, ResidualEncoder};

/// What the program prints when it is given no arguments.
const USAGE: &str =
    "cargo bench -p voxtell --bench encoder -- PATCH [REPEATS=1]   (PATCH 192: the full size)";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    voxtell_alloc::tune_allocator();
    let Some(args) = args_or_usage(USAGE) else {
        return Ok(());
    };
    let args: Vec<usize> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
    let patch = args.first().copied().unwrap_or(192);
    let repeats = args.get(1).copied().unwrap_or(1);
    let kw: ArchKwargs = PLAN.parse()?;
    let vb = FreshWeights::var_builder(DType::F32, &Device::Cpu);
    let encoder = ResidualEncoder::load(vb, &kw, 1)?;
    let x = Tensor::randn(0f32, 1.0, (1, 1, patch, patch, patch), &Device::Cpu)?;
    println!("ResEncL encoder, patch {patch}³, f32, {} cores", cores());
    for r in 0..repeats {
        let t = Instant::now();
        let skips = encoder.forward(&x)?;
        let dt = t.elapsed().as_secs_f64();
        let shapes: Vec<_> = skips.iter().map(|s| s.dims().to_vec()).collect();
        println!("run {r}: {dt:.2} s; skips {shapes:?}");
    }
    if let Some(p) = peak_rss_mib() {
        println!("peak RSS: {p:.0} MiB");
    }
    Ok(())
}

/// CPU cores available to this process (the kernels use them all).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
