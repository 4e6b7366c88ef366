//! `voxtell predict`: the official `voxtell-predict`, and more.
//!
//! Order of work: resolve every case and output name, load the bank and embed the union of all
//! prompts (so that an unknown prompt fails before any image work), load the model, then run
//! the cases with reading of the next case and writing of the last overlapping the prediction
//! of the current one. A case that fails is reported with its path and the batch goes on; the
//! exit code is non-zero at the end if any failed. Every file is written to a temporary name and
//! renamed, so an interrupted run leaves no partial files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use voxtell::candle::{DType, Device};
use voxtell::infer::naming::{self, OutputMode};
use voxtell::infer::{
    Accumulate, ConvPrecision, Masks, PredictOptions, Predictor, components, preview, stats,
};
use voxtell::io::{DicomOptions, RasVolume, WriteOptions};
use voxtell::text::{EmbeddingBank, PromptVectors, resolve_text_model};

/// The Hugging Face repository of the published VoxTell weights.
const MODEL_REPO: &str = "mrokuss/VoxTell";
/// The model folder inside it.
const MODEL_SUBDIR: &str = "voxtell_v1.1";
/// The official embedding bank inside it.
const BANK_FILE: &str = "embeddings/voxtell_v1.1/text_embeddings.npz";

/// Arguments of `voxtell predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Input scans: one folder of NIfTI files (all *.nii / *.nii.gz, sorted by name), NIfTI files
    /// in the given order, or folders that each hold one DICOM series (one case per folder).
    #[arg(short = 'i', long = "input", num_args = 1.., required_unless_present_any = ["jobs", "list_embeddings"])]
    pub input: Vec<PathBuf>,
    /// Output folder (created if missing).
    #[arg(short = 'o', long = "output", required_unless_present = "list_embeddings")]
    pub output: Option<PathBuf>,
    /// Model folder (plans.json + fold_0/checkpoint_final.pth); else $VOXTELL_MODEL, else
    /// mrokuss/VoxTell voxtell_v1.1 in the Hugging Face cache.
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Text prompts, applied to every input.
    #[arg(short = 'p', long = "prompts", num_args = 1.., conflicts_with = "jobs",
          required_unless_present_any = ["jobs", "list_embeddings"])]
    pub prompts: Vec<String>,
    /// Jobs as a JSON file or an inline JSON string: [{"image": PATH, "prompts": [..] or "text"}]
    /// (then -i is ignored).
    #[arg(long, value_name = "FILE|JSON")]
    pub jobs: Option<String>,
    /// Embedding bank (.npz, official format); else $VOXTELL_EMBEDDINGS, else the official bank
    /// in the Hugging Face cache.
    #[arg(long, value_name = "BANK")]
    pub embeddings: Option<PathBuf>,
    /// Use no embedding bank: embed every prompt with the text model.
    #[arg(long, conflicts_with = "embeddings")]
    pub no_precomputed: bool,
    /// Print the prompts of the embedding bank and exit.
    #[arg(long)]
    pub list_embeddings: bool,
    /// Text-model folder for prompts missing from the bank: Qwen3-Embedding, or the BERT sentence
    /// encoder the model's voxtell.json names (else $VOXTELL_TEXT_MODEL, else
    /// Qwen/Qwen3-Embedding-4B in the Hugging Face cache).
    #[arg(long, value_name = "DIR")]
    pub text_model: Option<PathBuf>,
    /// Precision of the text model: f32 (default), bf16 or f16 (half the memory; BERT encoders
    /// always run in f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub text_dtype: String,
    /// Write one label map per case ({case}.nii.gz, label i+1 = prompt i, later prompts
    /// overwrite) instead of one mask per prompt.
    #[arg(long)]
    pub save_combined: bool,
    /// Skip cases whose outputs all exist.
    #[arg(long)]
    pub no_overwrite: bool,
    /// Device: cpu, cuda or metal (default: a GPU when the binary was built with one and one is
    /// present, else cpu).
    #[arg(long, value_parser = ["cpu", "cuda", "metal"])]
    pub device: Option<String>,
    /// GPU index.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Tile step as a fraction of the patch size.
    #[arg(long, default_value_t = 0.5)]
    pub step_size: f64,
    /// Accumulator precision: f16 (the official numerics) or f32.
    #[arg(long, default_value = "f16", value_parser = ["f16", "f32"])]
    pub accumulate: String,
    /// Arithmetic of the network's convolutions on the CPU: f32 (the official numerics) or
    /// bf16 (bf16 products, f32 sums, on CPUs with AVX-512 BF16: about 1.3× faster, masks
    /// differ from f32 at 0.1–0.2 % of voxels; falls back to f32 elsewhere).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
    /// Memory budget of one prediction's working set, e.g. 8G or 512M (default: 80 % of the
    /// available memory). Prompts run in groups when all would not fit.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Also write f32 probability maps {case}_{prompt}_prob.nii.gz.
    #[arg(long)]
    pub save_probabilities: bool,
    /// Also write {case}_statistics.json: voxels, volume (ml), bounding box and centroid per
    /// prompt.
    #[arg(long)]
    pub statistics: bool,
    /// Also write {case}_preview.png: axial, coronal and sagittal slices with the masks.
    #[arg(long)]
    pub preview: bool,
    /// Keep only the largest 6-connected component of each mask.
    #[arg(long)]
    pub keep_largest: bool,
    /// SeriesInstanceUID to read from DICOM folders holding several series.
    #[arg(long)]
    pub series: Option<String>,
    /// Print more (plan, bank, timings).
    #[arg(short = 'v', long, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Print only errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// The text model's dtype from `--text-dtype` (clap admits only f32, bf16 and f16).
pub fn text_dtype(name: &str) -> DType {
    match name {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        _ => DType::F32,
    }
}

/// Parse a size like `8G`, `512M`, `1.5GiB` or a plain number of bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 8G, 512M)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{s:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

/// One image with its prompts and output names.
#[derive(Debug, Clone)]
struct Case {
    path: PathBuf,
    name: String,
    prompts: Vec<String>,
    /// Files this case writes, relative to the output folder.
    outputs: Vec<String>,
}

/// How the outputs of a case are written.
#[derive(Debug, Clone, Copy)]
struct Outputs {
    combined: bool,
    probabilities: bool,
    statistics: bool,
    preview: bool,
    keep_largest: bool,
}

/// Run `voxtell predict`; returns whether every case succeeded.
pub fn run(args: PredictArgs) -> anyhow::Result<bool> {
    let log = Log { quiet: args.quiet, verbose: args.verbose };
    if let Some(n) = args.threads {
        ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    let bank = load_bank(&args, &log)?;
    if args.list_embeddings {
        println!("{} prompts, {}-wide vectors", bank.len(), bank.dim());
        for label in bank.labels() {
            println!("{label}");
        }
        return Ok(true);
    }
    let out_dir = args.output.clone().ok_or_else(|| anyhow!("--output is required"))?;
    ensure!(
        args.step_size > 0.0 && args.step_size <= 1.0,
        "--step-size must be in (0, 1], got {}",
        args.step_size
    );
    let outputs = Outputs {
        combined: args.save_combined,
        probabilities: args.save_probabilities,
        statistics: args.statistics,
        preview: args.preview,
        keep_largest: args.keep_largest,
    };
    let mut cases = resolve_cases(&args, outputs)?;
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating the output folder {}", out_dir.display()))?;
    if args.no_overwrite {
        let before = cases.len();
        cases.retain(|c| !c.outputs.iter().all(|f| out_dir.join(f).exists()));
        if before != cases.len() {
            log.info(format!(
                "skipping {} case(s) whose outputs all exist (--no-overwrite)",
                before - cases.len()
            ));
        }
    }
    if cases.is_empty() {
        log.info("nothing to do".to_string());
        return Ok(true);
    }

    // Prompts first: an unknown prompt fails before any image work.
    let device = pick_device(args.device.as_deref(), args.gpu, &log)?;
    let text_dtype = text_dtype(&args.text_dtype);
    let mut text_model = resolve_text_model(args.text_model.as_deref());
    let model_dir = resolve_model(args.model.as_deref())?;
    // A model folder that names its text encoder (voxtell.json) refuses another kind: an error
    // for a folder the user named, silently unused when it only came from the default lookup.
    if let (Some(dir), Some(meta)) = (text_model.clone(), voxtell::fusion::ModelMeta::from_dir(&model_dir)?)
        && dir.join("config.json").is_file()
    {
        let t = &meta.text_encoder;
        let check = voxtell::text::EncoderSpec::of_folder(&dir)
            .and_then(|spec| spec.matches(&t.id, t.dim, &t.pooling, t.normalize, t.instruction.as_deref()));
        let explicit = args.text_model.is_some()
            || std::env::var_os("VOXTELL_TEXT_MODEL").is_some_and(|v| !v.is_empty());
        match check {
            Err(e) if explicit => return Err(e.into()),
            Err(e) => {
                log.verbose(format!("not using the cached text model {}: {e}", dir.display()));
                text_model = None;
            }
            Ok(()) => {}
        }
    }
    // The union of all prompts, embedded once (the text model, when needed, is loaded and
    // dropped here, before the segmentation model is loaded).
    let t0 = Instant::now();
    let mut source = PromptVectors::new(bank, text_model, text_dtype, &device);
    let mut union: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for c in &cases {
        for p in &c.prompts {
            if seen.insert(p.as_str()) {
                union.push(p);
            }
        }
    }
    let vectors = source.vectors(&union)?;
    let table: HashMap<String, Vec<f32>> = union.iter().map(|p| p.to_string()).zip(vectors).collect();
    log.verbose(format!("model: {}", model_dir.display()));
    let options = PredictOptions {
        step_size: args.step_size,
        accumulate: args.accumulate.parse::<Accumulate>()?,
        max_memory: args.max_memory,
        keep_logits: args.save_probabilities,
        precision: if args.precision == "bf16" { ConvPrecision::Bf16 } else { ConvPrecision::F32 },
    };
    if options.precision == ConvPrecision::Bf16 {
        if !device.is_cpu() {
            log.info(
                "--precision bf16 applies to the CPU kernels; on this device the network runs in f32"
                    .to_string(),
            );
        } else if !voxtell::vision::ops::bf16_supported() {
            log.info("this CPU has no AVX-512 BF16: --precision bf16 falls back to f32".to_string());
        }
    }
    let model = voxtell::fusion::VoxTellModel::from_dir(&model_dir, DType::F32, &device)
        .with_context(|| format!("loading the model from {}", model_dir.display()))?;
    let dim = model.config().text_dim;
    if let Some((p, v)) = table.iter().find(|(_, v)| v.len() != dim) {
        bail!(
            "the vector of prompt {p:?} is {}-wide but the model {} takes {dim}-wide ones (a bank or text model of another kind)",
            v.len(),
            model_dir.display()
        );
    }
    let predictor = Predictor::new(model, source, options)?;
    log.verbose(format!("prompts and model ready in {:.1} s", t0.elapsed().as_secs_f64()));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // The first Ctrl-C stops after the cases already predicted are written; a second ends
        // the process at once (outputs are renamed into place only when complete, so no output
        // name ever holds a partial file; a temporary file being written may remain).
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!(
                "\ninterrupted: writing the cases already predicted, then stopping (Ctrl-C again to quit now)"
            );
        });
    }
    let failures = run_cases(&predictor, &cases, &table, &out_dir, outputs, args.series.clone(), &stop, &log);
    if stop.load(Ordering::SeqCst) {
        eprintln!("stopped by the user");
        std::process::exit(130);
    }
    if !failures.is_empty() {
        eprintln!("{} of {} case(s) failed (reasons above):", failures.len(), cases.len());
        for (path, _) in &failures {
            eprintln!("  {}", path.display());
        }
        return Ok(false);
    }
    log.info(format!("{} case(s) done in {:.1} s", cases.len(), t0.elapsed().as_secs_f64()));
    Ok(true)
}

/// An error with its causes, each cause added only when the message so far does not already
/// say it (the crates' errors often include their source's text).
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
    }
    out
}

/// Messages by verbosity.
struct Log {
    quiet: bool,
    verbose: bool,
}

impl Log {
    fn info(&self, msg: String) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    fn verbose(&self, msg: String) {
        if self.verbose {
            eprintln!("{msg}");
        }
    }
}

/// The bank: --embeddings, $VOXTELL_EMBEDDINGS, the Hugging Face cache; empty with
/// --no-precomputed or when none is found.
fn load_bank(args: &PredictArgs, log: &Log) -> anyhow::Result<EmbeddingBank> {
    if args.no_precomputed {
        return Ok(EmbeddingBank::default());
    }
    let path = args
        .embeddings
        .clone()
        .or_else(|| std::env::var_os("VOXTELL_EMBEDDINGS").filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| hub_file(BANK_FILE));
    match path {
        Some(p) => {
            let bank = EmbeddingBank::read(&p)?;
            log.verbose(format!("embedding bank: {} ({} prompts)", p.display(), bank.len()));
            Ok(bank)
        }
        None => {
            log.verbose("no embedding bank found; prompts need a text model".to_string());
            Ok(EmbeddingBank::default())
        }
    }
}

/// A file of the VoxTell repository from the local Hugging Face cache (downloaded first when
/// built with the `download` feature and online).
fn hub_file(file: &str) -> Option<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if let Some(p) = cache.model(MODEL_REPO.to_string()).get(file) {
        return Some(p);
    }
    download(cache, file)
}

/// Fetch a file of the VoxTell repository into the cache (`download` feature).
#[cfg(feature = "download")]
fn download(cache: hf_hub::Cache, file: &str) -> Option<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(true).build().ok()?;
    api.model(MODEL_REPO.to_string()).get(file).ok()
}

/// Without the `download` feature nothing is fetched.
#[cfg(not(feature = "download"))]
fn download(_cache: hf_hub::Cache, _file: &str) -> Option<PathBuf> {
    None
}

/// The model folder: -m, $VOXTELL_MODEL, the Hugging Face cache.
fn resolve_model(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VOXTELL_MODEL").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let plans = hub_file(&format!("{MODEL_SUBDIR}/plans.json"));
    let ckpt = hub_file(&format!("{MODEL_SUBDIR}/fold_0/checkpoint_final.pth"));
    match (plans, ckpt) {
        (Some(p), Some(_)) => Ok(p.parent().map(Path::to_path_buf).unwrap_or_default()),
        _ => bail!(
            "no model: pass -m/--model DIR or set $VOXTELL_MODEL (the published weights are {MODEL_REPO}, folder {MODEL_SUBDIR}; {})",
            if cfg!(feature = "download") {
                "downloading them failed"
            } else {
                "this build does not download; build with `--features download` or fetch them with huggingface-cli"
            }
        ),
    }
}

/// The device asked for; a GPU that is not there falls back to the CPU with a warning, as the
/// official tool does.
fn pick_device(choice: Option<&str>, gpu: usize, log: &Log) -> anyhow::Result<Device> {
    let cuda = || Device::new_cuda(gpu);
    let metal = || Device::new_metal(gpu);
    Ok(match choice {
        Some("cpu") => Device::Cpu,
        Some("cuda") => cuda().unwrap_or_else(|e| {
            log.info(format!("warning: CUDA device {gpu} unavailable ({e}); using the CPU"));
            Device::Cpu
        }),
        Some("metal") => metal().unwrap_or_else(|e| {
            log.info(format!("warning: Metal device {gpu} unavailable ({e}); using the CPU"));
            Device::Cpu
        }),
        Some(other) => bail!("unknown device {other:?}"),
        None if voxtell::candle::utils::cuda_is_available() => cuda().unwrap_or(Device::Cpu),
        None if voxtell::candle::utils::metal_is_available() => metal().unwrap_or(Device::Cpu),
        None => Device::Cpu,
    })
}

/// Cases from --jobs or -i/-p, with their output names; clashing names are errors here.
fn resolve_cases(args: &PredictArgs, outputs: Outputs) -> anyhow::Result<Vec<Case>> {
    let pairs: Vec<(PathBuf, Vec<String>)> = match &args.jobs {
        Some(jobs) => parse_jobs(jobs)?,
        None => {
            ensure!(!args.prompts.is_empty(), "no prompts: pass -p/--prompts or --jobs");
            input_paths(&args.input)?.into_iter().map(|p| (p, args.prompts.clone())).collect()
        }
    };
    ensure!(!pairs.is_empty(), "no input images");
    let mut by_file: HashMap<String, PathBuf> = HashMap::new();
    let mut cases = Vec::with_capacity(pairs.len());
    for (path, prompts) in pairs {
        ensure!(!prompts.is_empty(), "{}: no prompts", path.display());
        let name = naming::case_name(&path);
        let mode = if outputs.combined { OutputMode::Combined } else { OutputMode::PerPrompt };
        let mut files = naming::output_files(&name, &prompts, mode)?;
        if outputs.probabilities {
            files.extend(prompts.iter().map(|p| naming::probability_file(&name, p)));
        }
        if outputs.statistics {
            files.push(naming::statistics_file(&name));
        }
        if outputs.preview {
            files.push(naming::preview_file(&name));
        }
        for f in &files {
            // The same prompt twice for one image writes the same file twice: harmless.
            if let Some(prev) = by_file.insert(f.clone(), path.clone())
                && prev != path
            {
                bail!(
                    "{} and {} would both write {f}; give the inputs different names (or one job per image)",
                    prev.display(),
                    path.display()
                );
            }
        }
        cases.push(Case { path, name, prompts, outputs: files });
    }
    Ok(cases)
}

fn is_nifti(p: &Path) -> bool {
    let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    n.ends_with(".nii") || n.ends_with(".nii.gz")
}

/// -i: one folder of NIfTI files (sorted), NIfTI files in order (de-duplicated), or DICOM
/// series folders.
fn input_paths(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    ensure!(!inputs.is_empty(), "no input: pass -i/--input");
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut nifti: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading the folder {}", input.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && is_nifti(p))
                .collect();
            let dicom = voxtell::io::is_dicom_folder(input);
            match (nifti.is_empty(), dicom) {
                (false, true) => bail!("{}: holds both NIfTI files and a DICOM series", input.display()),
                // Named after the folder, also when given as `.` or `..`.
                (true, true) => out.push(std::fs::canonicalize(input).unwrap_or_else(|_| input.clone())),
                (false, false) => {
                    ensure!(
                        inputs.len() == 1,
                        "{}: a folder of NIfTI files must be the only input",
                        input.display()
                    );
                    nifti.sort();
                    out.extend(nifti);
                }
                (true, false) => {
                    bail!("{}: no NIfTI files and no DICOM series in the folder", input.display())
                }
            }
        } else if input.is_file() {
            out.push(input.clone());
        } else {
            bail!("{}: no such file or folder", input.display());
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| seen.insert(p.clone()));
    Ok(out)
}

/// --jobs: a JSON file or an inline JSON string.
fn parse_jobs(jobs: &str) -> anyhow::Result<Vec<(PathBuf, Vec<String>)>> {
    let text = if Path::new(jobs).is_file() {
        std::fs::read_to_string(jobs).with_context(|| format!("reading the jobs file {jobs}"))?
    } else {
        jobs.to_string()
    };
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        if text.trim_start().starts_with('[') {
            "--jobs is not valid JSON".to_string()
        } else {
            format!("--jobs {jobs:?} is neither a file nor inline JSON")
        }
    })?;
    let list = value
        .as_array()
        .ok_or_else(|| anyhow!("--jobs must be a JSON list of {{\"image\", \"prompts\"}}"))?;
    list.iter()
        .enumerate()
        .map(|(i, job)| {
            let image = job
                .get("image")
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow!("job {i}: \"image\" must be a path string"))?;
            let prompts = match job.get("prompts") {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|p| p.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| anyhow!("job {i}: \"prompts\" must hold strings"))?,
                _ => bail!("job {i}: \"prompts\" must be a string or a list of strings"),
            };
            // A folder named `.` or `..` is a case named after the folder itself.
            let path = PathBuf::from(image);
            let path = if path.is_dir() { std::fs::canonicalize(&path).unwrap_or(path) } else { path };
            Ok((path, prompts))
        })
        .collect()
}

/// A case read and reoriented, ready to predict.
struct Loaded {
    ras: RasVolume,
}

/// A finished prediction on its way to the writer.
struct ToWrite {
    case: Case,
    masks: Masks,
    image: RasVolume,
}

/// Run every case: a reader thread reads ahead one case, a writer thread writes the last
/// case's files, the calling thread predicts. Returns the failed cases with their errors.
#[allow(clippy::too_many_arguments)]
fn run_cases(
    predictor: &Predictor,
    cases: &[Case],
    table: &HashMap<String, Vec<f32>>,
    out_dir: &Path,
    outputs: Outputs,
    series: Option<String>,
    stop: &AtomicBool,
    log: &Log,
) -> Vec<(PathBuf, String)> {
    let mut failures = Vec::new();
    std::thread::scope(|scope| {
        let (read_tx, read_rx) = mpsc::sync_channel::<(usize, anyhow::Result<Loaded>)>(1);
        let (write_tx, write_rx) = mpsc::sync_channel::<ToWrite>(1);
        let reader = scope.spawn(move || {
            for (i, case) in cases.iter().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let loaded = read_case(&case.path, series.as_deref());
                if read_tx.send((i, loaded)).is_err() {
                    break;
                }
            }
        });
        let writer = scope.spawn(move || {
            let mut failed = Vec::new();
            for job in write_rx {
                let t = Instant::now();
                let (path, name) = (job.case.path.clone(), job.case.name.clone());
                match write_case(job, out_dir, outputs) {
                    Ok(n) => {
                        log.info(format!("{name}: wrote {n} file(s) in {:.1} s", t.elapsed().as_secs_f64()))
                    }
                    Err(e) => {
                        let msg = message(&e);
                        eprintln!("error: {}: {msg}", path.display());
                        failed.push((path, msg));
                    }
                }
            }
            failed
        });
        for (i, loaded) in read_rx {
            let case = &cases[i];
            let result = loaded.and_then(|l| {
                let vectors: Vec<Vec<f32>> = case.prompts.iter().map(|p| table[p].clone()).collect();
                let masks = predict_case(predictor, case, &l.ras, &vectors, i, cases.len(), stop, log)?;
                Ok((masks, l.ras))
            });
            match result {
                Ok((masks, image)) => {
                    if write_tx.send(ToWrite { case: case.clone(), masks, image }).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let msg = message(&e);
                    eprintln!("error: {}: {msg}", case.path.display());
                    failures.push((case.path.clone(), msg));
                }
            }
            if stop.load(Ordering::SeqCst) {
                break;
            }
        }
        drop(write_tx);
        if reader.join().is_err() {
            failures.push((PathBuf::from("(reader)"), "the reading thread crashed".to_string()));
        }
        match writer.join() {
            Ok(f) => failures.extend(f),
            Err(_) => failures.push((PathBuf::from("(writer)"), "the writing thread crashed".to_string())),
        }
    });
    failures
}

fn read_case(path: &Path, series: Option<&str>) -> anyhow::Result<Loaded> {
    let volume = if path.is_dir() {
        voxtell::io::read_dicom_series(path, &DicomOptions { series_uid: series.map(String::from) })?
    } else {
        voxtell::io::read(path)?
    };
    Ok(Loaded { ras: volume.to_ras()? })
}

#[allow(clippy::too_many_arguments)]
fn predict_case(
    predictor: &Predictor,
    case: &Case,
    ras: &RasVolume,
    vectors: &[Vec<f32>],
    index: usize,
    n_cases: usize,
    stop: &AtomicBool,
    log: &Log,
) -> anyhow::Result<Masks> {
    let shape = ras.data.shape();
    let plan = predictor.plan([shape[0], shape[1], shape[2]], case.prompts.len())?;
    if plan.passes > 1 {
        log.info(format!(
            "{}: memory budget {}: running the {} prompts in {} groups of ≤ {} (the encoder runs once per group)",
            case.name,
            voxtell::infer::predict::human_bytes(plan.budget_bytes),
            case.prompts.len(),
            plan.passes,
            plan.prompt_group
        ));
    }
    log.verbose(format!("{}: {plan:?}", case.name));
    let label = format!("[{}/{}] {}", index + 1, n_cases, case.name);
    let bar = if !log.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new((plan.tiles * plan.passes) as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} tiles, {elapsed_precise} elapsed, ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(label.clone());
        Some(bar)
    } else {
        None
    };
    let t = Instant::now();
    let mut next_line = 0.25f64;
    let prompts = case.prompts.clone();
    let masks = predictor.predict_ras(ras, &prompts, vectors, |done, total| {
        if let Some(bar) = &bar {
            // The tiles cover the crop box, which the plan (on the whole volume) overestimates.
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        } else if !log.quiet && done as f64 / total as f64 >= next_line {
            eprintln!("{label}: {done}/{total} tiles, {:.1} s", t.elapsed().as_secs_f64());
            next_line += 0.25;
        }
        !stop.load(Ordering::SeqCst)
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let masks = masks?;
    log.info(format!(
        "{label}: {} tile(s) in {:.1} s",
        masks.plan().tiles * masks.plan().passes,
        t.elapsed().as_secs_f64()
    ));
    Ok(masks)
}

/// Write every output of one case; returns how many files were written.
fn write_case(job: ToWrite, out_dir: &Path, outputs: Outputs) -> anyhow::Result<usize> {
    let ToWrite { case, mut masks, image } = job;
    let opts = WriteOptions { overwrite: true };
    if outputs.keep_largest {
        for i in 0..masks.len() {
            let mut m = masks.mask(i)?;
            components::keep_largest_component(&mut m);
            masks.set_mask(i, &m)?;
        }
    }
    let mut written = 0;
    if outputs.combined {
        masks.write_combined(out_dir.join(&case.outputs[0]), opts)?;
        written += 1;
    } else {
        for i in 0..masks.len() {
            masks.write_mask(i, out_dir.join(&case.outputs[i]), opts)?;
            written += 1;
        }
    }
    if outputs.probabilities {
        for (i, p) in case.prompts.iter().enumerate() {
            masks.write_probabilities(i, out_dir.join(naming::probability_file(&case.name, p)), opts)?;
            written += 1;
        }
    }
    if outputs.statistics {
        let s = stats::of_masks(&case.name, &case.path.display().to_string(), &masks)?;
        stats::write_statistics(&out_dir.join(naming::statistics_file(&case.name)), &s, true)?;
        written += 1;
    }
    if outputs.preview {
        let p = preview::of_masks(&image, &masks)?;
        p.write_png(&out_dir.join(naming::preview_file(&case.name)), true)?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("8G"), Ok(8 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("3X").is_err());
    }

    #[test]
    fn jobs_accept_a_string_or_a_list_of_prompts() {
        let jobs = parse_jobs(
            r#"[{"image": "a.nii.gz", "prompts": "liver"}, {"image": "b.nii", "prompts": ["x", "y"]}]"#,
        )
        .unwrap();
        assert_eq!(jobs[0], (PathBuf::from("a.nii.gz"), vec!["liver".to_string()]));
        assert_eq!(jobs[1].1, vec!["x".to_string(), "y".to_string()]);
        assert!(parse_jobs(r#"[{"image": 3, "prompts": "x"}]"#).is_err());
        assert!(parse_jobs(r#"[{"image": "a", "prompts": [1]}]"#).is_err());
        assert!(parse_jobs("no-such-file.json").is_err());
    }
}
