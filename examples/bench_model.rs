//! Time the full-size VoxTell network (ResEncL 32…320, text 2560, query 2048, 32 fusion heads,
//! 6 prompt-decoder layers; fresh random weights) on one patch with several prompt counts, and
//! report the peak resident memory.
//!
//! ```text
//! cargo run --release -p voxtell --example bench_model -- [prompts=1] [patch=192] [budget_gib=8] [share=1]
//! ```
//! `share=0` runs the decoder the official way (skip repeated per prompt) to measure what
//! sharing the skip half of the first convolutions saves.
//! Run one prompt count per process so that each peak RSS is its own. Compare with
//! `tools/.venv/bin/python benches/pytorch_bench.py --only model --prompts 1,4,13`.

use std::time::Instant;

use voxtell::candle::{DType, Device, Tensor};
use voxtell::fusion::{FreshWeights, VoxTellConfig, VoxTellModel};

/// VoxTell's released encoder plan (`arch_kwargs` of `plans.json`).
const PLAN: &str = r#"{"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3,3,3],[3,3,3],[3,3,3],[3,3,3],[3,3,3],[3,3,3]],
    "strides": [[1,1,1],[2,2,2],[2,2,2],[2,2,2],[2,2,2],[2,2,2]], "n_blocks_per_stage": [1,3,4,6,6,6],
    "n_conv_per_stage_decoder": [1,1,1,1,1], "conv_bias": true,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": true},
    "dropout_op": null, "dropout_op_kwargs": null, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": true}}"#;

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    voxtell::tune_allocator();
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let prompts = args.first().copied().unwrap_or(1);
    let patch = args.get(1).copied().unwrap_or(192);
    let budget_gib = args.get(2).copied().unwrap_or(8);
    let share = args.get(3).copied().unwrap_or(1) != 0;
    let config = VoxTellConfig {
        arch: PLAN.parse()?,
        patch_size: [patch; 3],
        decoder_layer: 4,
        text_dim: 2560,
        text_hidden: 2048,
        query_dim: 2048,
        fusion_heads: 32,
        projection_hidden: 2048,
        layers: 6,
        ffn_dim: 2048,
        attention_heads: 8,
    };
    let t = Instant::now();
    let mut model = VoxTellModel::build(config, FreshWeights::var_builder(DType::F32, &Device::Cpu), false)?;
    model.set_share_skip_half(share);
    println!("built the full-size model in {:.1} s", t.elapsed().as_secs_f64());
    let group = model.prompt_group_for_budget((budget_gib as u64) << 30, 4);
    let image = Tensor::randn(0f32, 1.0, (1, 1, patch, patch, patch), &Device::Cpu)?;
    let text = Tensor::randn(0f32, 1.0, (1, prompts, 2560), &Device::Cpu)?;
    let t = Instant::now();
    let out = model.forward_grouped(&image, &text, group)?;
    let dt = t.elapsed().as_secs_f64();
    println!(
        "patch {patch}³, {prompts} prompt(s) in groups of {group}, skip half shared: {share}: {dt:.2} s; logits {:?}",
        out.outputs[0].dims()
    );
    if let Some(p) = peak_rss_mib() {
        println!("peak RSS: {p:.0} MiB");
    }
    Ok(())
}
