//! Time the full-size ResEncL encoder (VoxTell's: features 32…320, blocks 1,3,4,6,6,6) on one
//! patch with random weights, and report its peak resident memory.
//!
//! ```text
//! cargo run --release --example bench_encoder -- [patch=192] [repeats=1]
//! ```
//! Compare with `tools/.venv/bin/python benches/pytorch_bench.py --only encoder`.

use std::time::Instant;

use voxtell::candle::{DType, Device, Tensor};
use voxtell::fusion::FreshWeights;
use voxtell::vision::{ArchKwargs, ResidualEncoder};

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    voxtell::tune_allocator();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
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

/// VoxTell's released encoder plan (`arch_kwargs` of `plans.json`).
const PLAN: &str = r#"{"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3,3,3],[3,3,3],[3,3,3],[3,3,3],[3,3,3],[3,3,3]],
    "strides": [[1,1,1],[2,2,2],[2,2,2],[2,2,2],[2,2,2],[2,2,2]], "n_blocks_per_stage": [1,3,4,6,6,6],
    "n_conv_per_stage_decoder": [1,1,1,1,1], "conv_bias": true,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": true},
    "dropout_op": null, "dropout_op_kwargs": null, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": true}}"#;
