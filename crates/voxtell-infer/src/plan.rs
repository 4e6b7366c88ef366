//! The memory [`Plan`] of a prediction: how many prompts share one pass over the tiles, how many
//! run through the decoder at once, and what that costs, under a memory budget.

use voxtell_fusion::VoxTellConfig;

use crate::error::{InferError, Result};
use crate::options::PredictOptions;

/// How a prediction will run: how many prompts share one pass over the tiles, and the memory
/// that needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// Tiles per pass.
    pub tiles: usize,
    /// Prompts accumulated together in one pass over the tiles.
    pub prompt_group: usize,
    /// Prompts run through the network's decoder at once (always 1 on the CPU).
    pub decoder_group: usize,
    /// Passes over the tiles (1 unless memory is short).
    pub passes: usize,
    /// Estimated peak bytes of the working set.
    pub estimated_bytes: u64,
    /// The budget it was planned for (the whole budget less `held_bytes`).
    pub budget_bytes: u64,
    /// Bytes the batch's other stages held when it was planned — the case read ahead, the case
    /// being written ([`crate::Predictor::run_batch`]) — taken off the budget.
    pub held_bytes: u64,
}

impl Plan {
    /// The prompts of each pass over the tiles, in order (`prompt_group` prompts each, the last
    /// pass taking the rest).
    pub fn groups<'a>(&self, prompts: &'a [String]) -> Vec<&'a [String]> {
        prompts.chunks(self.prompt_group.max(1)).collect()
    }
}

/// The plan for a volume of (S, A, R) shape `ras_shape` and `n_prompts` prompts, for a model of
/// `config` whose decoder needs `per_prompt_decoder` bytes per prompt, under the budget of
/// `options` (`PredictOptions::max_memory`, else 80 % of the available memory) less the `held`
/// bytes of a batch's other stages.
pub(crate) fn plan(
    config: &VoxTellConfig,
    per_prompt_decoder: u64,
    options: &PredictOptions,
    on_cpu: bool,
    ras_shape: [usize; 3],
    n_prompts: usize,
    held: u64,
) -> Result<Plan> {
    let patch = config.patch_size;
    let padded: [usize; 3] = std::array::from_fn(|a| ras_shape[a].max(patch[a]));
    let step = options.step_size;
    if !(step > 0.0 && step <= 1.0) || patch.iter().any(|&p| (p as f64 * step) < 1.0) {
        return Err(InferError::Option {
            option: "step_size",
            reason: format!("step size {step} does not fit the {patch:?} patch"),
        });
    }
    let tiles = (0..3).map(|a| crate::window::steps(padded[a], patch[a], step).len()).product();
    let vox_padded = padded.iter().product::<usize>() as u64;
    let vox = ras_shape.iter().product::<usize>() as u64;
    let n = n_prompts.max(1) as u64;
    let acc_b = options.accumulate.bytes() as u64;
    // The input (the (S, A, R) volume and the prepared copy, cropped and padded; see
    // `input_bytes`) and the kept results (u8 masks, optional logits).
    let kept = if options.keep_logits { 1 + acc_b } else { 1 };
    let fixed = input_bytes(ras_shape, patch) + n * vox * kept;
    // Encoder activations of one tile: each stage's output, kept as a skip, plus two
    // temporaries of the largest stage.
    let f = &config.arch.features_per_stage;
    let stage_bytes: Vec<u64> = config
        .stage_sizes()
        .iter()
        .zip(f)
        .map(|(sz, &c)| sz.iter().product::<usize>() as u64 * c as u64 * 4)
        .collect();
    let encoder = stage_bytes.iter().sum::<u64>() + 2 * stage_bytes.iter().copied().max().unwrap_or(0);
    let per_prompt_decoder = per_prompt_decoder.max(1);
    let patch_vox = patch.iter().product::<usize>() as u64;
    let budget = budget(options).saturating_sub(held);
    for g in (1..=n).rev() {
        let accumulators = (g + 1) * vox_padded * acc_b + g * patch_vox * 4;
        let base = fixed + encoder + accumulators;
        if base + per_prompt_decoder > budget {
            continue;
        }
        // On the CPU the decoder runs one prompt at a time: batching prompts through it was
        // slower there (4 prompts at 192³: 65 s and 18.6 GB batched, 43 s and 7.8 GB one
        // at a time; docs/performance.md) — its kernels already keep both cores busy, and
        // a batch only multiplies the full-resolution activations. On a GPU the budget
        // decides (not measured there yet).
        let most = if on_cpu { 1 } else { g };
        let decoder_group = ((budget - base) / per_prompt_decoder).clamp(1, most);
        let passes = n.div_ceil(g);
        return Ok(Plan {
            tiles,
            prompt_group: g as usize,
            decoder_group: decoder_group as usize,
            passes: passes as usize,
            estimated_bytes: base + decoder_group * per_prompt_decoder,
            budget_bytes: budget,
            held_bytes: held,
        });
    }
    let need = fixed + encoder + 2 * vox_padded * acc_b + patch_vox * 4 + per_prompt_decoder;
    let others = if held > 0 {
        format!(
            " left beside the {} the batch holds for the cases read ahead and being written",
            human_bytes(held)
        )
    } else {
        String::new()
    };
    Err(InferError::Memory(format!(
        "a volume of {ras_shape:?} voxels needs about {} even one prompt at a time, over the budget of {}{others} (raise the memory budget, option `max_memory`, or use a machine with more memory)",
        human_bytes(need),
        human_bytes(budget)
    )))
}

/// The working-set budget of `options`: `max_memory`, else 80 % of the memory available now.
pub(crate) fn budget(options: &PredictOptions) -> u64 {
    match options.max_memory {
        Some(b) => b,
        None => available_memory().map(|a| a / 5 * 4).unwrap_or(u64::MAX),
    }
}

/// Memory the system can still give, when known: what a budget is taken from when none is
/// given (defined beside the text encoder's load guard, which reads it too).
pub use voxtell_text::available_memory;

/// Bytes of a case's input while it waits for or runs through the network: the (S, A, R)
/// volume (f32) and its prepared copy, cropped and padded to at least `patch` (at most the
/// padded whole volume).
pub(crate) fn input_bytes(ras_shape: [usize; 3], patch: [usize; 3]) -> u64 {
    let vox = ras_shape.iter().map(|&d| d as u64).product::<u64>();
    let padded = (0..3).map(|a| ras_shape[a].max(patch[a]) as u64).product::<u64>();
    (vox + padded) * 4
}

/// `1.5 GiB`, `120.0 MiB`, `512 KiB`, `100 B`.
pub fn human_bytes(b: u64) -> String {
    let f = b as f64;
    if b >= 1 << 30 {
        format!("{:.2} GiB", f / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.1} MiB", f / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.0} KiB", f / 1024.0)
    } else {
        format!("{b} B")
    }
}
