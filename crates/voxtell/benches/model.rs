//! Time the full-size VoxTell network (ResEncL 32…320, text 2560, query 2048, 32 fusion heads,
//! 6 prompt-decoder layers; fresh random weights) on one patch with several prompt counts, and
//! report the peak resident memory.
//!
//! ```text
//! cargo bench -p voxtell --bench model -- PROMPTS [patch=192] [budget_gib=8] [share=1] [f32|bf16|both]
//! ```
//! Without arguments it prints this usage and measures nothing (so `cargo bench` alone does not
//! start a full-size run); `-- 1` is the single-prompt full-size run.
//! `share=0` runs the decoder the official way (skip repeated per prompt) to measure what
//! sharing the skip half of the first convolutions saves; `bf16` runs the stride-1
//! convolutions with bf16 products (`ConvPrecision::Bf16`); `both` runs f32 and then bf16 on
//! the same input and reports bf16's fidelity: the largest logit difference and, with the
//! random network's logits thresholded at f32's 10 %, 50 % and 90 % quantiles (as a calibrated
//! model's 0 would split them) and at 0, the voxels whose mask agrees and the Dice of the
//! bf16 mask against the f32 one (the peak RSS then covers both runs).
//! Run one prompt count per process so that each peak RSS is its own. Compare with
//! `tools/.venv/bin/python benches/pytorch_bench.py --only model --prompts 1,4,13`.

#![allow(unsafe_code)] // the counting allocator below: a forwarding `GlobalAlloc`

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::{PLAN, args_or_usage, peak_rss_mib};
use voxtell::candle::{DType, Device, Tensor};
use voxtell::fusion::{FreshWeights, VoxTellConfig, VoxTellModel};
use voxtell::vision::ops::{ConvPrecision, with_conv_precision};
use voxtell_alloc::BlockAllocator;

/// What the program prints when it is given no arguments.
const USAGE: &str =
    "cargo bench -p voxtell --bench model -- PROMPTS [patch=192] [budget_gib=8] [share=1] [f32|bf16|both]";

/// The `voxtell` command's allocator ([`voxtell_alloc::BlockAllocator`]), counting the bytes
/// live on the heap and their peak, so that the peak RSS can be told apart from what the
/// allocator keeps but no tensor uses.
struct Counting;

static INNER: BlockAllocator = BlockAllocator::new();

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn add(size: usize) {
        let now = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to the block allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Counting::add(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Counting::add(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { INNER.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        Counting::add(new_size);
        // SAFETY: the caller's contract, forwarded.
        unsafe { INNER.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// bf16 against f32 logits, per prompt: largest difference, and mask agreement and Dice at
/// f32's 10/50/90 % quantiles and at 0.
fn fidelity(reference: &[f32], bf16: &[f32], prompts: usize) {
    let n = reference.len() / prompts;
    for p in 0..prompts {
        let (a, b) = (&reference[p * n..(p + 1) * n], &bf16[p * n..(p + 1) * n]);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        println!("prompt {p}: max |logit bf16 − f32| {worst:.4} (max |logit| {scale:.3})");
        let mut sorted = a.to_vec();
        sorted.sort_unstable_by(f32::total_cmp);
        for (label, t) in
            [("q10", sorted[n / 10]), ("q50", sorted[n / 2]), ("q90", sorted[n * 9 / 10]), ("0", 0.0)]
        {
            let (mut same, mut both, mut either) = (0usize, 0usize, 0usize);
            for (x, y) in a.iter().zip(b) {
                let (m, k) = (*x > t, *y > t);
                same += usize::from(m == k);
                both += usize::from(m && k);
                either += usize::from(m) + usize::from(k);
            }
            let positive = a.iter().filter(|&&x| x > t).count() as f64 / n as f64;
            let dice = if either == 0 { 1.0 } else { 2.0 * both as f64 / either as f64 };
            println!(
                "  threshold {label:>3} ({t:+.4}, {:.1} % positive): agreement {:.5} %, Dice {dice:.6}",
                100.0 * positive,
                100.0 * same as f64 / n as f64
            );
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    voxtell_alloc::tune_allocator();
    let Some(mut args) = args_or_usage(USAGE) else {
        return Ok(());
    };
    let precisions = match args.get(4).map(String::as_str) {
        None | Some("f32") => vec![ConvPrecision::F32],
        Some("bf16") => vec![ConvPrecision::Bf16],
        Some("both") => vec![ConvPrecision::F32, ConvPrecision::Bf16],
        Some(other) => return Err(format!("precision {other:?}: f32, bf16 or both").into()),
    };
    args.truncate(4);
    let args: Vec<usize> = args.iter().map(|a| a.parse()).collect::<Result<_, _>>()?;
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
    let mut logits = Vec::new();
    for precision in precisions {
        let t = Instant::now();
        let out = with_conv_precision(precision, || model.forward_grouped(&image, &text, group))?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "patch {patch}³, {prompts} prompt(s) in groups of {group}, skip half shared: {share}, {precision:?}: {dt:.2} s; logits {:?}",
            out.outputs[0].dims()
        );
        logits.push(out.outputs[0].flatten_all()?.to_vec1::<f32>()?);
    }
    if let [reference, bf16] = &logits[..] {
        fidelity(reference, bf16, prompts);
    }
    if let Some(p) = peak_rss_mib() {
        println!("peak RSS: {p:.0} MiB");
    }
    println!("peak live heap: {:.0} MiB", PEAK.load(Ordering::Relaxed) as f64 / (1 << 20) as f64);
    println!("large blocks: {:?}", INNER.stats());
    Ok(())
}
