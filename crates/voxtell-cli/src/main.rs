//! The `voxtell` command-line tool.

mod cohort;
mod predict;
mod report;
mod serve;
mod setup;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use voxtell::io::{DicomOptions, read_dicom_series, read_nifti};

/// VoxTell: text-prompted segmentation of 3-D CT, MR and PET scans.
#[derive(Debug, Parser)]
#[command(name = "voxtell", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Segment scans from text prompts (a superset of the official voxtell-predict).
    Predict(Box<predict::PredictArgs>),
    /// Serve the official voxtell-server HTTP API (napari-voxtell's remote mode) with this
    /// engine: upload scans, run prompt jobs with progress, fetch masks, export label maps.
    Serve(Box<serve::ServeArgs>),
    /// Train or fine-tune a text-prompted model (Dice + BCE, deep supervision), or resume a run.
    Train(train::TrainArgs),
    /// Write synthetic torso CT phantoms with their masks as an nnU-Net dataset, with a
    /// vocabulary and the prompts to embed (by default the embedded demo model's training
    /// settings).
    #[command(after_help = train::PHANTOM_AFTER_HELP)]
    Phantom(train::PhantomArgs),
    /// Print shape, spacing, orientation, affine and intensity range of scans (NIfTI files or
    /// DICOM series folders), or the plans, sizes and parameter count of a model folder.
    Info {
        /// NIfTI files (.nii, .nii.gz), folders holding one DICOM series, or model folders
        /// (holding plans.json).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// SeriesInstanceUID to read from a folder holding several DICOM series.
        #[arg(long)]
        series: Option<String>,
        /// Also print the array layout the network sees (after RAS reorientation).
        #[arg(long)]
        ras: bool,
    },
    /// Build or extend an embedding bank (.npz) with prompt vectors, or list one.
    Embed {
        /// Prompts to embed.
        #[arg(short = 'p', long = "prompts", num_args = 1..)]
        prompts: Vec<String>,
        /// A text file with one prompt per line (empty lines are skipped).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// The bank to write.
        #[arg(short = 'o', long = "output", required_unless_present = "list")]
        output: Option<PathBuf>,
        /// Add to the bank at --output instead of refusing to replace it.
        #[arg(long)]
        append: bool,
        /// Text-model folder: Qwen3-Embedding or a BERT sentence encoder such as all-MiniLM-L6-v2
        /// (else $VOXTELL_TEXT_MODEL, else Qwen3-Embedding-4B in the Hugging Face cache).
        #[arg(long)]
        text_model: Option<PathBuf>,
        /// Precision of the text model: f32 (default on CPU) or bf16 (half the memory).
        #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
        text_dtype: String,
        /// List the prompts of a bank and exit.
        #[arg(long, value_name = "BANK", conflicts_with_all = ["prompts", "from_file", "output"])]
        list: Option<PathBuf>,
    },
    /// Convert a model folder (plans.json + fold_0/checkpoint_final.pth) into one that loads
    /// without the pickle reader: plans.json, model.safetensors (canonical keys) and voxtell.json.
    Convert {
        /// The model folder to read.
        model: PathBuf,
        /// The folder to write (created if missing).
        out: PathBuf,
        /// Replace an existing model.safetensors in the output folder.
        #[arg(long)]
        overwrite: bool,
    },
}

/// Tensor-sized buffers reuse freed pages and the resident size stays at the live peak
/// ([`voxtell_alloc::BlockAllocator`]); `VOXTELL_SYSTEM_MALLOC=1` turns it off.
#[global_allocator]
static ALLOCATOR: voxtell_alloc::BlockAllocator = voxtell_alloc::BlockAllocator::new();

/// Give freed memory back to the system (a server between jobs).
fn release_memory() {
    ALLOCATOR.release();
    voxtell_alloc::trim_heap();
}

fn main() -> ExitCode {
    voxtell_alloc::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Predict(args) => match predict::run(*args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {}", report::message(&e));
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => match serve::run(*args, release_memory) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", report::message(&e));
                ExitCode::FAILURE
            }
        },
        Command::Phantom(args) => match train::phantom(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", report::message(&e));
                ExitCode::FAILURE
            }
        },
        Command::Train(args) => match train::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", report::message(&e));
                ExitCode::FAILURE
            }
        },
        Command::Info { paths, series, ras } => info(&paths, series, ras),
        Command::Embed { prompts, from_file, output, append, text_model, text_dtype, list } => {
            match embed(prompts, from_file, output, append, text_model, &text_dtype, list) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", report::message(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Convert { model, out, overwrite } => match voxtell::fusion::convert(&model, &out, overwrite)
        {
            Ok(()) => {
                println!("wrote {}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn info(paths: &[PathBuf], series: Option<String>, ras: bool) -> ExitCode {
    let mut failed = Vec::new();
    for path in paths {
        if voxtell::fusion::is_model_dir(path) {
            if let Err(e) = model_info(path) {
                eprintln!("error: {e:#}");
                failed.push(path.display().to_string());
            }
            continue;
        }
        let volume = if path.is_dir() {
            read_dicom_series(path, &DicomOptions { series_uid: series.clone(), ..Default::default() })
        } else {
            read_nifti(path)
        };
        let result = volume.and_then(|v| {
            print!("{}", v.summary());
            if ras {
                let r = v.to_ras()?;
                let [s, a, rr] = r.geometry.ras_shape();
                let [ss, sa, sr] = r.geometry.spacing();
                println!(
                    "  network layout (S, A, R): {s} × {a} × {rr}, spacing {ss:.4} × {sa:.4} × {sr:.4} mm"
                );
            }
            Ok(())
        });
        if let Err(e) = result {
            eprintln!("error: {e}");
            failed.push(path.display().to_string());
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} of {} inputs failed: {}", failed.len(), paths.len(), failed.join(", "));
        ExitCode::FAILURE
    }
}

fn embed(
    mut prompts: Vec<String>,
    from_file: Option<PathBuf>,
    output: Option<PathBuf>,
    append: bool,
    text_model: Option<PathBuf>,
    text_dtype: &str,
    list: Option<PathBuf>,
) -> anyhow::Result<()> {
    use voxtell::text::{EmbeddingBank, PromptVectors, resolve_text_model};
    if let Some(bank) = list {
        let bank = EmbeddingBank::read(&bank)?;
        println!("{} prompts, {}-wide vectors", bank.len(), bank.dim());
        for label in bank.labels() {
            println!("{label}");
        }
        return Ok(());
    }
    if let Some(file) = from_file {
        let text = std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(String::from));
    }
    anyhow::ensure!(!prompts.is_empty(), "no prompts given (-p or --from-file)");
    let output = output.ok_or_else(|| anyhow::anyhow!("--output is required"))?;
    let bank = if output.exists() {
        anyhow::ensure!(append, "{} exists; pass --append to add to it", output.display());
        EmbeddingBank::read(&output)?
    } else {
        EmbeddingBank::default()
    };
    let dtype = setup::text_dtype(text_dtype);
    let model = resolve_text_model(text_model.as_deref());
    let mut source = PromptVectors::new(bank, model, dtype, &voxtell::candle::Device::Cpu);
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    source.vectors(&refs)?;
    source.bank().write(&output)?;
    println!("{}: {} prompts, {}-wide vectors", output.display(), source.bank().len(), source.bank().dim());
    Ok(())
}

/// Print a model folder's plans, sizes and parameter count.
fn model_info(dir: &Path) -> anyhow::Result<()> {
    use voxtell::fusion::{ModelDir, checkpoint::is_alias};
    let folder = ModelDir::open(dir)?;
    let (ckpt, config, meta, plans) = (folder.checkpoint(), folder.config(), folder.meta(), folder.plans());
    let weights = folder.weights_path();
    let params: usize = ckpt
        .keys()
        .into_iter()
        .filter(|k| !is_alias(k) && *k != "pos_embed")
        .filter_map(|k| ckpt.shape(k).map(|s| s.iter().product::<usize>()))
        .sum();
    let a = &config.arch;
    println!("{}", dir.display());
    println!("  weights:      {}", weights.display());
    println!("  parameters:   {params} ({:.1} M)", params as f64 / 1e6);
    println!("  patch size:   {:?}", config.patch_size);
    println!("  stages:       {} (features {:?})", a.n_stages, a.features_per_stage);
    println!("  strides:      {:?}", a.strides);
    println!("  blocks:       {:?} per encoder stage", a.n_blocks_per_stage);
    println!("  stage sizes:  {:?}", config.stage_sizes());
    println!(
        "  text:         {}-wide prompt vectors → query {} ({} heads, {} layers, FFN {})",
        config.text_dim, config.query_dim, config.attention_heads, config.layers, config.ffn_dim
    );
    println!("  fusion heads: {}, memory from encoder stage {}", config.fusion_heads, config.decoder_layer);
    if let Some(t) = meta.map(|m| &m.text_encoder) {
        println!("  text encoder: {} ({}-wide, {} pooling)", t.id, t.dim, t.pooling);
    }
    if let Some(name) = plans.get("plans_name").and_then(|v| v.as_str()) {
        println!("  plans name:   {name}");
    }
    Ok(())
}
