//! Score a phantom-trained model on held-out phantoms: every prompt of the demo bank (default
//! names, training synonyms, held-out paraphrases) on `N` regenerated cases, Dice against the
//! generator's truth; then the left/right check (a left prompt scored against the right
//! structure's truth and the reverse).
//!
//! ```sh
//! cargo run --release -p voxtell --example evaluate_demo -- [DEMO_DIR] [N] [f32|bf16]
//! ```
//!
//! `DEMO_DIR` (default `assets/demo`) holds `model/`, `bank.npz` and `phantom.json`, as
//! [`voxtell::demo::Demo::load`] reads them; `N` defaults to 20. `bf16` runs the network's
//! convolutions with bf16 products ([`voxtell::infer::ConvPrecision::Bf16`]).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use voxtell::demo::{Demo, PromptOrigin, demo_dir, dice, prompts, truth};
use voxtell::infer::{ConvPrecision, PredictOptions};

fn main() -> Result<(), Box<dyn Error>> {
    voxtell::tune_allocator();
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(demo_dir);
    let n: usize = std::env::args().nth(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    if n == 0 {
        return Err("N: evaluate at least one held-out case".into());
    }
    let mut demo = Demo::load(&dir)?;
    let precision = match std::env::args().nth(3).as_deref() {
        None | Some("f32") => ConvPrecision::F32,
        Some("bf16") => ConvPrecision::Bf16,
        Some(other) => return Err(format!("precision {other:?}: f32 or bf16").into()),
    };
    demo.predictor.set_options(PredictOptions { precision, ..demo.predictor.options().clone() });
    let all = prompts();
    let pairs: Vec<(&str, &str)> = all.iter().map(|p| (p.text.as_str(), p.key.as_str())).collect();
    // Left/right pairs: (prompt index, the other side's key).
    let swapped = |key: &str| -> Option<String> {
        if key.ends_with("_left") {
            Some(key.replace("_left", "_right"))
        } else if key.ends_with("_right") {
            Some(key.replace("_right", "_left"))
        } else {
            None
        }
    };
    // key → origin → Dice values; prompt → Dice values; worst cross-side Dice.
    let mut by_key: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut by_prompt: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Per structure pair ("kidney", "lung"): the highest Dice of a prompt for one side against
    // the other side's truth.
    let mut cross_worst: BTreeMap<String, (f64, String)> = BTreeMap::new();
    // prompt → (Dice on the cases that have its structure, predicted voxels on the cases without).
    let mut presence: BTreeMap<String, (Vec<f64>, Vec<u64>)> = BTreeMap::new();
    let t0 = Instant::now();
    for c in 0..n {
        let case = demo.held_out_case(c);
        let texts: Vec<&str> = pairs.iter().map(|(p, _)| *p).collect();
        let masks = demo.segment(&case, &texts)?;
        let scores = demo.score_masks(&case, &masks, &pairs)?;
        for (p, s) in all.iter().zip(&scores) {
            let origin = match p.origin {
                PromptOrigin::Default => "default",
                PromptOrigin::Synonym => "synonym",
                PromptOrigin::Paraphrase => "paraphrase",
            };
            by_key.entry(p.key.clone()).or_default().entry(origin).or_default().push(s.dice);
            by_prompt.entry(p.text.clone()).or_default().push(s.dice);
            let entry = presence.entry(p.text.clone()).or_default();
            if s.truth > 0 { entry.0.push(s.dice) } else { entry.1.push(s.predicted) }
        }
        // Each side's truth once per case (several prompts name each side).
        let mut side_truth = BTreeMap::new();
        for (i, p) in all.iter().enumerate() {
            if let Some(other) = swapped(&p.key) {
                if !side_truth.contains_key(&other) {
                    side_truth.insert(other.clone(), truth(&case, &other)?);
                }
                let d = dice(masks.mask(i)?.view(), side_truth[&other].view());
                let pair = p.key.trim_end_matches("_left").trim_end_matches("_right").to_string();
                let worst = cross_worst.entry(pair).or_insert((0.0, String::new()));
                if d > worst.0 {
                    *worst = (d, format!("{:?} vs the {other} truth, case {c}", p.text));
                }
            }
        }
        println!("case {c} ({}, {:.0} s so far)", case.axcodes, t0.elapsed().as_secs_f64());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!("\n{:<20} {:>8} {:>8} {:>10} {:>8}", "structure", "default", "synonym", "paraphrase", "min");
    let mut worst = f64::INFINITY;
    for (key, origins) in &by_key {
        let all_values: Vec<f64> = origins.values().flatten().copied().collect();
        worst = worst.min(min(&all_values));
        let col = |o: &str| origins.get(o).map_or("-".to_string(), |v| format!("{:.3}", mean(v)));
        println!(
            "{key:<20} {:>8} {:>8} {:>10} {:>8.3}",
            col("default"),
            col("synonym"),
            col("paraphrase"),
            min(&all_values)
        );
    }
    // Structures some cases lack (lesions): Dice is 0 on such a case as soon as one voxel is
    // predicted, so the cases with and without the structure are shown apart.
    // "mean (lowest …)" of the Dice values, or a dash when no evaluated case has the structure.
    let summary = |v: &[f64]| {
        if v.is_empty() { "-".to_string() } else { format!("{:.3} (lowest {:.3})", mean(v), min(v)) }
    };
    for key in by_key.keys() {
        let of_key: Vec<&(Vec<f64>, Vec<u64>)> =
            all.iter().filter(|p| &p.key == key).map(|p| &presence[&p.text]).collect();
        let present: Vec<f64> = of_key.iter().flat_map(|(d, _)| d).copied().collect();
        let absent: Vec<u64> = of_key.iter().flat_map(|(_, v)| v).copied().collect();
        if absent.is_empty() {
            continue;
        }
        let with_voxels = absent.iter().filter(|&&v| v > 0).count();
        let voxels = absent.iter().sum::<u64>() as f64 / (absent.len() as f64);
        println!(
            "{key}: Dice {} over the {} (prompt, case) pairs with it; of the {} without it, \
             {with_voxels} have predicted voxels ({voxels:.0} on average)",
            summary(&present),
            present.len(),
            absent.len()
        );
        for p in all.iter().filter(|p| &p.key == key) {
            let (present, absent) = &presence[&p.text];
            let with_voxels = absent.iter().filter(|&&v| v > 0).count();
            println!(
                "  {} on the {} cases with it, predicted voxels on {with_voxels} of the {} without: {:?}",
                summary(present),
                present.len(),
                absent.len(),
                p.text
            );
        }
    }
    let mut prompt_means: Vec<(f64, &String)> = by_prompt.iter().map(|(p, v)| (mean(v), p)).collect();
    prompt_means.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("\nthe ten lowest prompts (mean Dice over the cases):");
    for (m, p) in prompt_means.iter().take(10) {
        println!("  {m:.3}  {p:?}");
    }
    println!("\nthe held-out paraphrases (mean Dice over the cases):");
    for p in all.iter().filter(|p| matches!(p.origin, PromptOrigin::Paraphrase)) {
        if let Some(values) = by_prompt.get(&p.text) {
            println!("  {:.3}  {:?} ({})", mean(values), p.text, p.key);
        }
    }
    let (worst_prompt, worst_mean) = by_prompt
        .iter()
        .map(|(p, v)| (p.clone(), mean(v)))
        .fold((String::new(), f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a });
    println!("\nlowest single Dice {worst:.3}; lowest prompt mean {worst_mean:.3} ({worst_prompt:?})");
    for (pair, (d, what)) in &cross_worst {
        println!("left/right {pair}: highest Dice against the other side {d:.3} ({what})");
    }
    println!("{n} cases × {} prompts in {:.1} s", pairs.len(), t0.elapsed().as_secs_f64());
    Ok(())
}
