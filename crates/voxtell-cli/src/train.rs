//! `voxtell train`: a text-prompted training run from a TOML configuration, or the
//! continuation of one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use voxtell::train::TrainError;
use voxtell::train::config::TrainConfig;
use voxtell::train::trainer::{Progress, RunState, train};

/// Arguments of `voxtell train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's configuration (TOML; see the README and voxtell_train::config).
    #[arg(long, value_name = "TOML", required_unless_present = "resume", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    /// Continue the run in this output folder exactly where its last checkpoint left it.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Print only the end-of-epoch lines and errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Run `voxtell train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (config, resume) = match (&args.config, &args.resume) {
        (Some(path), None) => (TrainConfig::from_file(path)?, false),
        (None, Some(dir)) => {
            let state = dir.join("model").join("state.json");
            let text = std::fs::read_to_string(&state)
                .with_context(|| format!("{}: no training state to resume", state.display()))?;
            let mut s: RunState = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a training state", state.display()))?;
            // The run continues where it is now, also if its folder was moved.
            s.config.output = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            (s.config, true)
        }
        _ => bail!("give --config TOML for a new run or --resume DIR to continue one"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing the epoch and its checkpoint (Ctrl-C again to quit now)");
        });
    }
    let terminal = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut bar: Option<ProgressBar> = None;
    eprintln!(
        "training {} epochs × {} iterations (batch {}) into {}",
        config.schedule.epochs,
        config.schedule.iterations_per_epoch,
        config.schedule.batch_size,
        config.output.display()
    );
    let summary = train(&config, resume, |p: &Progress| {
        if let Some(e) = &p.epoch_log {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            let val = match (e.val_loss, e.val_dice) {
                (Some(l), Some(d)) => format!(", validation loss {l:.4}, Dice {d:.3}"),
                (Some(l), None) => format!(", validation loss {l:.4}"),
                _ => String::new(),
            };
            eprintln!(
                "epoch {}/{}: loss {:.4}{val}, lr {:.2e}, {:.1} s",
                e.epoch + 1,
                p.epochs,
                e.train_loss,
                e.lr,
                e.seconds
            );
        } else if terminal {
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(p.iterations as u64);
                b.set_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b
            });
            b.set_position(p.iteration as u64);
            b.set_message(format!("epoch {}/{} loss {:.4} lr {:.2e}", p.epoch + 1, p.epochs, p.loss, p.lr));
        }
        !stop.load(Ordering::SeqCst)
    })
    .map_err(with_command_hint)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if summary.stopped {
        eprintln!("stopped; continue with: voxtell train --resume {}", config.output.display());
    }
    eprintln!("model: {} (load it with voxtell predict -m)", summary.model_dir.display());
    Ok(())
}

/// Arguments of `voxtell phantom`. The defaults of the settings are the training settings of the
/// embedded demo model (`voxtell::phantom::PhantomOptions::default`); the help marks
/// values outside them.
#[derive(Debug, Args)]
pub struct PhantomArgs {
    /// Folder to write the dataset into (the dataset is a new subfolder `NAME`).
    pub out: PathBuf,
    /// Dataset name (nnU-Net style).
    #[arg(long, default_value = "Dataset001_Phantom")]
    pub name: String,
    /// Number of cases.
    #[arg(long, default_value_t = 20)]
    pub cases: usize,
    /// Seed (cases are a function of the seed and their index).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// In-plane voxel spacing range in mm [default: 4,5]; outside 4–5 mm (e.g. 2,3) the demo
    /// model was not trained.
    #[arg(long, value_delimiter = ',', value_name = "MIN,MAX")]
    pub inplane_spacing: Option<Vec<f64>>,
    /// Slice spacing range in mm [default: 5,6]; outside 5–6 mm the demo model was not trained.
    #[arg(long, value_delimiter = ',', value_name = "MIN,MAX")]
    pub slice_spacing: Option<Vec<f64>>,
    /// Liver lesion radius range in mm [default: 15,28]; outside 15–28 mm (smaller lesions) the
    /// demo model was not trained.
    #[arg(long, value_delimiter = ',', value_name = "MIN,MAX")]
    pub lesion_radius: Option<Vec<f64>>,
    /// Fraction of cases with liver lesions, 0 to 1 [default: 0.65]; the others are
    /// lesion-free (negatives for the lesion prompts). Any fraction keeps each case one the demo
    /// model was trained on.
    #[arg(long, value_name = "FRACTION")]
    pub lesion_fraction: Option<f64>,
    /// How much darker than the liver its lesions are, a range in HU [default: 45,65]; outside
    /// 45–65 HU (fainter lesions) the demo model was not trained.
    #[arg(long, value_delimiter = ',', value_name = "MIN,MAX")]
    pub lesion_contrast: Option<Vec<f64>>,
    /// Standard deviation range of the image noise in HU [default: 6,14]; outside 6–14 HU
    /// (noisier scans) the demo model was not trained.
    #[arg(long, value_delimiter = ',', value_name = "MIN,MAX")]
    pub noise_sd: Option<Vec<f64>>,
}

/// What `voxtell phantom --help` says after the flags.
pub const PHANTOM_AFTER_HELP: &str = "\
The defaults of the settings are the phantoms the embedded demo model (assets/demo) was trained
on: voxtell predict with assets/demo/model segments them at its documented quality. A range
reaching outside a default (finer voxels, smaller or fainter lesions, more noise) makes valid
phantoms outside what the demo model was trained on: expect lower Dice and false lesion voxels
there (figures just outside its range: assets/demo/README.md). The settings are recorded in
the dataset's dataset.json.";

/// The settings of `options` that reach outside the demo model's training settings (the
/// generator's defaults), as flag and value: `--inplane-spacing 2,3 (the demo model's: 4–5 mm)`.
pub fn outside_demo(options: &voxtell::phantom::PhantomOptions) -> Vec<String> {
    let demo = voxtell::phantom::PhantomOptions::default();
    let mut out = Vec::new();
    for (flag, r, d, unit) in [
        ("--inplane-spacing", options.inplane_spacing_mm, demo.inplane_spacing_mm, "mm"),
        ("--slice-spacing", options.slice_spacing_mm, demo.slice_spacing_mm, "mm"),
        ("--lesion-radius", options.lesion_radius_mm, demo.lesion_radius_mm, "mm"),
        ("--lesion-contrast", options.lesion_contrast_hu, demo.lesion_contrast_hu, "HU"),
        ("--noise-sd", options.noise_sd_hu, demo.noise_sd_hu, "HU"),
    ] {
        if r[0] < d[0] || r[1] > d[1] {
            out.push(format!("{flag} {},{} (the demo model's: {}–{} {unit})", r[0], r[1], d[0], d[1]));
        }
    }
    out
}

/// Run `voxtell phantom`: the dataset, `vocabulary.json` and `prompts.txt` (every vocabulary
/// prompt, then the held-out paraphrases, one per line, for `voxtell embed --from-file`).
pub fn phantom(args: PhantomArgs) -> anyhow::Result<()> {
    use voxtell::phantom::{PhantomOptions, paraphrases, vocabulary_json, write_dataset};
    let mut options = PhantomOptions { cases: args.cases, seed: args.seed, ..PhantomOptions::default() };
    let range = |r: &[f64], flag: &str| -> anyhow::Result<[f64; 2]> {
        match r {
            [a, b] => Ok([*a, *b]),
            _ => bail!("{flag} takes two numbers, e.g. 2.5,4.0"),
        }
    };
    if let Some(r) = &args.inplane_spacing {
        options.inplane_spacing_mm = range(r, "--inplane-spacing")?;
    }
    if let Some(r) = &args.slice_spacing {
        options.slice_spacing_mm = range(r, "--slice-spacing")?;
    }
    if let Some(r) = &args.lesion_radius {
        options.lesion_radius_mm = range(r, "--lesion-radius")?;
    }
    if let Some(f) = args.lesion_fraction {
        options.lesion_case_fraction = f;
    }
    if let Some(r) = &args.lesion_contrast {
        options.lesion_contrast_hu = range(r, "--lesion-contrast")?;
    }
    if let Some(r) = &args.noise_sd {
        options.noise_sd_hu = range(r, "--noise-sd")?;
    }
    let dir = write_dataset(&args.out, &args.name, &options)?;
    let vocab = vocabulary_json(&args.name);
    let vocab_path = args.out.join("vocabulary.json");
    let vocab_text = serde_json::to_string_pretty(&vocab)? + "\n";
    voxtell::io::atomic::write_bytes(&vocab_path, vocab_text.as_bytes(), true)
        .with_context(|| format!("writing {}", vocab_path.display()))?;
    let mut prompts: Vec<String> = Vec::new();
    if let Some(entries) = vocab.get(&args.name).and_then(|v| v.as_object()) {
        for list in entries.values().filter_map(|v| v.as_array()) {
            prompts.extend(list.iter().filter_map(|p| p.as_str().map(String::from)));
        }
    }
    prompts.extend(paraphrases().into_iter().map(|(_, p)| p));
    let prompts_path = args.out.join("prompts.txt");
    voxtell::io::atomic::write_bytes(&prompts_path, (prompts.join("\n") + "\n").as_bytes(), true)
        .with_context(|| format!("writing {}", prompts_path.display()))?;
    println!(
        "{}: {} cases; {} and {} ({} prompts)",
        dir.display(),
        args.cases,
        vocab_path.display(),
        prompts_path.display(),
        prompts.len()
    );
    let outside = outside_demo(&options);
    if !outside.is_empty() {
        eprintln!(
            "note: outside the embedded demo model's training settings: {}; the demo model was not \
             trained on such phantoms (assets/demo/README.md)",
            outside.join(", ")
        );
    }
    Ok(())
}

/// A training error as the command reports it: the library names the bank that lacks vectors;
/// the command adds how to fill it.
fn with_command_hint(e: TrainError) -> anyhow::Error {
    match &e {
        TrainError::MissingVectors { path, .. } => {
            anyhow::anyhow!("{e}; add them with `voxtell embed --append -o {}`", path.display())
        }
        _ => anyhow::Error::from(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_vectors_get_the_embed_command_that_fills_the_bank() {
        let e = TrainError::MissingVectors { path: "run/bank.npz".into(), prompts: vec!["cube".into()] };
        let text = with_command_hint(e).to_string();
        assert!(text.contains("cube") && text.contains("voxtell embed --append -o run/bank.npz"), "{text}");
    }
}
