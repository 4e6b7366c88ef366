//! Score a phantom-trained model on held-out phantoms: every prompt of the demo bank (default
//! names, training synonyms, held-out paraphrases) on `N` regenerated cases, Dice against the
//! generator's truth; the false-positive voxels of the prompts of a structure some cases lack
//! (the liver lesions) on the cases without it; the left/right check (a left prompt scored
//! against the right structure's truth and the reverse); and the demo's bar (every structure
//! ≥ 0.85 by default name, synonym and held-out paraphrase, left/right ≤ 0.05, at most 50
//! false-positive lesion voxels on any lesion-free case).
//!
//! ```sh
//! cargo run --release -p voxtell --example evaluate_demo -- [DEMO_DIR] [N] [f32|bf16] [SETTINGS]
//! ```
//!
//! `DEMO_DIR` (default `assets/demo`) holds `model/`, `bank.npz` and `phantom.json`, as
//! [`voxtell::demo::Demo::load`] reads them; `N` defaults to 20. `bf16` runs the network's
//! convolutions with bf16 products ([`voxtell::infer::ConvPrecision::Bf16`]).
//!
//! The phantoms are held-out cases (indices from [`voxtell::demo::HELD_OUT_START`] on) of the
//! generator's default settings, which are the demo model's training distribution, unless
//! `SETTINGS` say otherwise (flags may come anywhere; `--flag value` or `--flag=value`):
//!
//! - `--settings FILE.json`: generator settings as `voxtell phantom` records them in
//!   `dataset.json` (`phantom.options`); fields it does not name take the generator's defaults;
//! - `--training`: the demo folder's own `phantom.json` (the training settings, seed included);
//! - `--seed S`, `--inplane-spacing A,B`, `--slice-spacing A,B`, `--lesion-radius A,B`,
//!   `--lesion-fraction F`, `--lesion-contrast A,B`, `--noise-sd A,B`: single settings, named and
//!   meant as `voxtell phantom`'s flags, applied last. E.g. `--inplane-spacing 2,2` evaluates
//!   just outside the demo model's training range.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use voxtell::demo::{Demo, HELD_OUT_START, PromptOrigin, demo_dir, dice, held_out, prompts, truth};
use voxtell::infer::{ConvPrecision, PredictOptions};
use voxtell::phantom::PhantomOptions;

/// The demo's bar: the lowest mean Dice of a structure by each kind of prompt.
const MIN_DICE: f64 = 0.85;
/// The demo's bar: the highest Dice of a left prompt against the right structure (or reverse).
const MAX_CROSS_DICE: f64 = 0.05;
/// The demo's bar: the most voxels a prompt may mark on a case without its structure.
const MAX_FALSE_VOXELS: u64 = 50;

/// The command line: positional arguments and the phantom settings.
struct Args {
    dir: PathBuf,
    n: usize,
    precision: ConvPrecision,
    /// `--settings FILE` or `--training`: where the settings come from (before single flags).
    base: Base,
    /// Single settings (`--seed 3`), in order.
    overrides: Vec<(String, String)>,
}

/// Where the phantom settings start from.
enum Base {
    /// The generator's defaults.
    Defaults,
    /// A JSON file of settings.
    File(PathBuf),
    /// The demo folder's `phantom.json`.
    Training,
}

/// One prompt's results split by whether a case has its structure.
#[derive(Default)]
struct Presence {
    /// Dice on the cases that have the structure.
    present: Vec<f64>,
    /// (case, predicted voxels) on the cases without it: every such voxel is a false positive.
    absent: Vec<(usize, u64)>,
}

/// The flags that take a value, as `voxtell phantom` names them.
const SETTING_FLAGS: [&str; 7] = [
    "--seed",
    "--inplane-spacing",
    "--slice-spacing",
    "--lesion-radius",
    "--lesion-fraction",
    "--lesion-contrast",
    "--noise-sd",
];

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut positional = Vec::new();
    let mut base = Base::Defaults;
    let mut overrides = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if !arg.starts_with("--") {
            positional.push(arg);
            continue;
        }
        if arg == "--training" {
            base = Base::Training;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if flag != "--settings" && !SETTING_FLAGS.contains(&flag.as_str()) {
            return Err(format!(
                "unknown flag {flag}: --settings FILE, --training, or one of {}",
                SETTING_FLAGS.join(", ")
            )
            .into());
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if flag == "--settings" {
            base = Base::File(PathBuf::from(value));
        } else {
            overrides.push((flag, value));
        }
    }
    if positional.len() > 3 {
        return Err(format!("too many arguments: {positional:?} (DEMO_DIR N f32|bf16)").into());
    }
    let dir = positional.first().map(PathBuf::from).unwrap_or_else(demo_dir);
    let n = match positional.get(1) {
        Some(s) => s.parse().map_err(|e| format!("N {s:?}: {e}"))?,
        None => 20,
    };
    if n == 0 {
        return Err("N: evaluate at least one held-out case".into());
    }
    let precision = match positional.get(2).map(String::as_str) {
        None | Some("f32") => ConvPrecision::F32,
        Some("bf16") => ConvPrecision::Bf16,
        Some(other) => return Err(format!("precision {other:?}: f32 or bf16").into()),
    };
    Ok(Args { dir, n, precision, base, overrides })
}

/// The settings the arguments describe (`training`: the demo's own).
fn settings(args: &Args, training: &PhantomOptions) -> Result<PhantomOptions, Box<dyn Error>> {
    let mut o = match &args.base {
        Base::Defaults => PhantomOptions::default(),
        Base::Training => training.clone(),
        Base::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text)
                .map_err(|e| format!("{}: not phantom settings: {e}", path.display()))?
        }
    };
    for (flag, value) in &args.overrides {
        let number = |s: &str| -> Result<f64, Box<dyn Error>> {
            s.trim().parse::<f64>().map_err(|e| format!("{flag} {value:?}: {e}").into())
        };
        let range = || -> Result<[f64; 2], Box<dyn Error>> {
            match value.split(',').collect::<Vec<_>>()[..] {
                [a, b] => Ok([number(a)?, number(b)?]),
                _ => Err(format!("{flag} {value:?}: two numbers, e.g. 2,3").into()),
            }
        };
        match flag.as_str() {
            "--seed" => o.seed = value.parse().map_err(|e| format!("--seed {value:?}: {e}"))?,
            "--inplane-spacing" => o.inplane_spacing_mm = range()?,
            "--slice-spacing" => o.slice_spacing_mm = range()?,
            "--lesion-radius" => o.lesion_radius_mm = range()?,
            "--lesion-fraction" => o.lesion_case_fraction = number(value)?,
            "--lesion-contrast" => o.lesion_contrast_hu = range()?,
            "--noise-sd" => o.noise_sd_hu = range()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    o.validate().map_err(|e| e.to_string())?;
    Ok(o)
}

/// Where the settings `o` reach outside the `training` ones: a range that extends beyond the
/// training range, or another value of a single setting (the fraction of lesion cases aside:
/// any fraction keeps each case one the model was trained on). Empty when every case of `o` is
/// one the training settings could have drawn.
fn outside(o: &PhantomOptions, training: &PhantomOptions) -> Vec<String> {
    let mut out = Vec::new();
    for (name, r, t) in [
        ("in-plane spacing", o.inplane_spacing_mm, training.inplane_spacing_mm),
        ("slice spacing", o.slice_spacing_mm, training.slice_spacing_mm),
        ("noise", o.noise_sd_hu, training.noise_sd_hu),
        ("lesion radius", o.lesion_radius_mm, training.lesion_radius_mm),
        ("lesion contrast", o.lesion_contrast_hu, training.lesion_contrast_hu),
    ] {
        if r[0] < t[0] || r[1] > t[1] {
            out.push(format!("{name} {}–{} (trained: {}–{})", r[0], r[1], t[0], t[1]));
        }
    }
    let same = PhantomOptions {
        cases: o.cases,
        seed: o.seed,
        inplane_spacing_mm: o.inplane_spacing_mm,
        slice_spacing_mm: o.slice_spacing_mm,
        noise_sd_hu: o.noise_sd_hu,
        lesion_radius_mm: o.lesion_radius_mm,
        lesion_contrast_hu: o.lesion_contrast_hu,
        lesion_case_fraction: o.lesion_case_fraction,
        ..training.clone()
    };
    if &same != o {
        out.push("other generator settings (anatomy, blur, storage order, lesion count or voxel cap)".into());
    }
    out
}

/// The settings in a line.
fn describe(o: &PhantomOptions) -> String {
    let r = |v: [f64; 2]| format!("{}–{}", v[0], v[1]);
    format!(
        "seed {}, in-plane {} mm, slices {} mm, noise σ {} HU, lesions {} mm and {} HU darker in {} % of the cases",
        o.seed,
        r(o.inplane_spacing_mm),
        r(o.slice_spacing_mm),
        r(o.noise_sd_hu),
        r(o.lesion_radius_mm),
        r(o.lesion_contrast_hu),
        o.lesion_case_fraction * 100.0
    )
}

fn main() -> Result<(), Box<dyn Error>> {
    voxtell_alloc::tune_allocator();
    let args = parse_args()?;
    let n = args.n;
    let mut demo = Demo::load(&args.dir)?;
    let options = settings(&args, &demo.phantom)?;
    println!(
        "{n} held-out phantoms (case indices {HELD_OUT_START}–{}): {}",
        HELD_OUT_START + n - 1,
        describe(&options)
    );
    let beyond = outside(&options, &demo.phantom);
    if beyond.is_empty() {
        println!("  within the demo model's training settings");
    } else {
        println!("  outside the demo model's training settings: {}", beyond.join(", "));
    }
    demo.predictor
        .set_options(PredictOptions { precision: args.precision, ..demo.predictor.options().clone() });
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
    let origin_name = |o: PromptOrigin| match o {
        PromptOrigin::Default => "default",
        PromptOrigin::Synonym => "synonym",
        PromptOrigin::Paraphrase => "paraphrase",
    };
    // key → origin → Dice values over all cases; the same over the cases that have the key's
    // structure; prompt → Dice values; worst cross-side Dice.
    let mut by_key: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut present_by_key: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut by_prompt: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // key → the lowest Dice of a prompt on a case that has the structure: (Dice, case, prompt).
    let mut lowest_case: BTreeMap<String, (f64, usize, String)> = BTreeMap::new();
    // Per structure pair ("kidney", "lung"): the highest Dice of a prompt for one side against
    // the other side's truth.
    let mut cross_worst: BTreeMap<String, (f64, String)> = BTreeMap::new();
    let mut presence: BTreeMap<String, Presence> = BTreeMap::new();
    let t0 = Instant::now();
    for c in 0..n {
        let case = held_out(&options, c);
        let texts: Vec<&str> = pairs.iter().map(|(p, _)| *p).collect();
        let masks = demo.segment(&case, &texts)?;
        let scores = demo.score_masks(&case, &masks, &pairs)?;
        for (p, s) in all.iter().zip(&scores) {
            let origin = origin_name(p.origin);
            by_key.entry(p.key.clone()).or_default().entry(origin).or_default().push(s.dice);
            by_prompt.entry(p.text.clone()).or_default().push(s.dice);
            let entry = presence.entry(p.text.clone()).or_default();
            if s.truth > 0 {
                entry.present.push(s.dice);
                let low = lowest_case.entry(p.key.clone()).or_insert((f64::INFINITY, 0, String::new()));
                if s.dice < low.0 {
                    *low = (s.dice, c, p.text.clone());
                }
                present_by_key.entry(p.key.clone()).or_default().entry(origin).or_default().push(s.dice);
            } else {
                entry.absent.push((c, s.predicted));
            }
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
        // Spacing along the storage axes, in world terms: the axes nearest x and y are in-plane.
        let spacing = case.spacing();
        let inplane: Vec<String> = (0..3)
            .filter(|&a| !case.axcodes[a..=a].contains(['S', 'I']))
            .map(|a| format!("{:.2}", spacing[a]))
            .collect();
        let slice = (0..3).find(|&a| case.axcodes[a..=a].contains(['S', 'I'])).map_or(0.0, |a| spacing[a]);
        println!(
            "case {c} ({}, {} mm in-plane, {slice:.2} mm slices, {} liver lesion(s), {:.0} s so far)",
            case.axcodes,
            inplane.join(" × "),
            case.liver_lesions,
            t0.elapsed().as_secs_f64()
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\n{:<20} {:>8} {:>8} {:>10} {:>8}  lowest where present",
        "structure", "default", "synonym", "paraphrase", "min"
    );
    let mut worst = f64::INFINITY;
    for (key, origins) in &by_key {
        let all_values: Vec<f64> = origins.values().flatten().copied().collect();
        worst = worst.min(min(&all_values));
        let col = |o: &str| origins.get(o).map_or("-".to_string(), |v| format!("{:.3}", mean(v)));
        let low =
            lowest_case.get(key).map_or("-".to_string(), |(d, c, p)| format!("{d:.3} (case {c}, {p:?})"));
        println!(
            "{key:<20} {:>8} {:>8} {:>10} {:>8.3}  {low}",
            col("default"),
            col("synonym"),
            col("paraphrase"),
            min(&all_values)
        );
    }
    // Structures some cases lack (lesions): Dice is 0 on such a case as soon as one voxel is
    // predicted, so the cases with and without the structure are shown apart, and on the cases
    // without it every predicted voxel is a false positive.
    // "mean (lowest …)" of the Dice values, or a dash when no evaluated case has the structure.
    let summary = |v: &[f64]| {
        if v.is_empty() { "-".to_string() } else { format!("{:.3} (lowest {:.3})", mean(v), min(v)) }
    };
    // key → (cases without the structure, the highest false-positive count and where).
    let mut false_positives: BTreeMap<String, (usize, u64, String)> = BTreeMap::new();
    for key in by_key.keys() {
        let of_key: Vec<(&str, &Presence)> =
            all.iter().filter(|p| &p.key == key).map(|p| (p.text.as_str(), &presence[&p.text])).collect();
        let present: Vec<f64> = of_key.iter().flat_map(|(_, r)| &r.present).copied().collect();
        let absent: Vec<(usize, u64)> = of_key.iter().flat_map(|(_, r)| &r.absent).copied().collect();
        if absent.is_empty() {
            continue;
        }
        let mut cases_without: Vec<usize> = absent.iter().map(|&(c, _)| c).collect();
        cases_without.sort_unstable();
        cases_without.dedup();
        let mut cases_hit: Vec<usize> = absent.iter().filter(|&&(_, v)| v > 0).map(|&(c, _)| c).collect();
        cases_hit.sort_unstable();
        cases_hit.dedup();
        let pairs_hit = absent.iter().filter(|&&(_, v)| v > 0).count();
        let voxels = absent.iter().map(|&(_, v)| v as f64).sum::<f64>() / absent.len() as f64;
        let (top_prompt, top_case, top) = of_key
            .iter()
            .flat_map(|(p, r)| r.absent.iter().map(move |&(c, x)| (*p, c, x)))
            .fold(("", 0, 0u64), |a, b| if b.2 > a.2 { b } else { a });
        let where_top = if top > 0 { format!(" ({top_prompt:?}, case {top_case})") } else { String::new() };
        println!(
            "\n{key}: Dice {} over the {} (prompt, case) pairs with it",
            summary(&present),
            present.len()
        );
        println!(
            "{key}: false-positive voxels on the {} cases without it: {} of them get voxels from some \
             prompt; {pairs_hit} of the {} (prompt, case) pairs, {voxels:.1} voxels per pair on average, \
             at most {top}{where_top}",
            cases_without.len(),
            cases_hit.len(),
            absent.len()
        );
        for (text, Presence { present, absent }) in &of_key {
            let hit = absent.iter().filter(|&&(_, v)| v > 0).count();
            let max = absent.iter().map(|&(_, v)| v).max().unwrap_or(0);
            let avg = absent.iter().map(|&(_, v)| v as f64).sum::<f64>() / absent.len().max(1) as f64;
            println!(
                "  Dice {} on the {} cases with it; false positives on {hit} of the {} without \
                 (mean {avg:.1}, max {max} voxels): {text:?}",
                summary(present),
                present.len(),
                absent.len()
            );
        }
        false_positives.insert(key.clone(), (cases_without.len(), top, where_top));
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
        let what = if what.is_empty() { "no prompt reaches the other side" } else { what };
        println!("left/right {pair}: highest Dice against the other side {d:.3} ({what})");
    }
    println!("{n} cases × {} prompts in {:.1} s", pairs.len(), t0.elapsed().as_secs_f64());

    // The bar, on the cases that have each structure.
    println!("\nthe demo's bar on these phantoms:");
    let mut low = Vec::new();
    let mut lowest = (f64::INFINITY, String::new());
    for (key, origins) in &present_by_key {
        for (origin, values) in origins {
            let m = mean(values);
            if m < lowest.0 {
                lowest = (m, format!("{key} by {origin}"));
            }
            if m < MIN_DICE {
                low.push(format!("{key} by {origin} {m:.3}"));
            }
        }
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "  every structure ≥ {MIN_DICE} by default name, synonym and paraphrase (mean over the cases that \
         have it): {} (lowest {:.3}, {}){}",
        verdict(low.is_empty()),
        lowest.0,
        lowest.1,
        if low.is_empty() { String::new() } else { format!("; below: {}", low.join(", ")) }
    );
    let cross = cross_worst.values().map(|(d, _)| *d).fold(0.0, f64::max);
    let cross_list: Vec<String> = cross_worst.iter().map(|(pair, (d, _))| format!("{pair} {d:.3}")).collect();
    println!(
        "  left/right ≤ {MAX_CROSS_DICE}: {} ({})",
        verdict(cross <= MAX_CROSS_DICE),
        cross_list.join(", ")
    );
    for (key, (cases, top, where_top)) in &false_positives {
        println!(
            "  {key} prompts ≤ {MAX_FALSE_VOXELS} voxels on each of the {cases} cases without it: {} (at most \
             {top}{where_top})",
            verdict(*top <= MAX_FALSE_VOXELS)
        );
    }
    if false_positives.is_empty() {
        println!("  false positives: not measured (every case has every structure)");
    }
    Ok(())
}
