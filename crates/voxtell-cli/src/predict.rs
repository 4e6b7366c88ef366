//! `voxtell predict`: the official `voxtell-predict`, and more.
//!
//! The work is the library's batch API ([`voxtell::infer::batch`]): this module turns the flags
//! into jobs, writers and options, shows progress from the batch's events, stops on Ctrl-C and
//! prints. Order of work: resolve every case and output name, embed the union of all prompts
//! (an unknown prompt fails before any image work), load the model, then run the cases; a case
//! that fails is reported with its path and the batch goes on, and the exit code is non-zero at
//! the end if any failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, ensure};
use clap::Args;
use voxtell::infer::{
    Accumulate, Batch, BatchOptions, CancelToken, CaseStatus, CombinedMap, ConvPrecision, DicomSegFile,
    Event, MaskFiles, OutputWriter, Part, PartArg, PredictOptions, Predictor, PreviewImage, ProbabilityMaps,
    StatisticsFile, jobs_from_inputs, jobs_from_json,
};
use voxtell::io::DicomOptions;

use crate::cohort;
use crate::report::{CaseNotes, Log, Progress};
use crate::setup::{DeviceArg, gpu_index, load_bank, locate, parse_size, pick_device};

/// An output format of `--output-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputType {
    /// NIfTI masks (the official output).
    Nifti,
    /// One DICOM SEG per case over its source series (`dicom_seg`: TotalSegmentator's spelling).
    #[value(name = "dicom-seg", alias = "dicom_seg")]
    DicomSeg,
}

/// Arguments of `voxtell predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Input scans: one folder of NIfTI files (all *.nii / *.nii.gz, sorted by name), NIfTI files
    /// in the given order, or folders that each hold one DICOM series (one case per folder).
    #[arg(short = 'i', long = "input", num_args = 1.., required_unless_present_any = ["jobs", "list_embeddings", "retry_failed"])]
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
          required_unless_present_any = ["jobs", "list_embeddings", "retry_failed"])]
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
    /// Output formats of the masks, comma-separated: nifti (one mask per prompt, or the label
    /// map of --save-combined), dicom-seg ({case}_seg.dcm: one DICOM SEG per case over its source
    /// series, one segment per prompt whose mask is not empty; DICOM inputs only). With
    /// dicom-seg alone no NIfTI masks are written.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1.., default_value = "nifti")]
    pub output_type: Vec<OutputType>,
    /// Skip cases whose outputs all exist: resume a run that was stopped (nnU-Net's
    /// --continue-prediction is an alias).
    #[arg(long, visible_alias = "continue-prediction", alias = "continue_prediction")]
    pub no_overwrite: bool,
    /// Split the cases into this many parts (nnU-Net's -num_parts): the sorted case names, every
    /// N-th from --part-id. `auto`: SLURM_ARRAY_TASK_COUNT.
    #[arg(long, value_name = "N|auto")]
    pub num_parts: Option<PartArg>,
    /// Which part to run, 0 to N-1 (nnU-Net's -part_id). `auto`: from the Slurm array task
    /// (SLURM_ARRAY_TASK_ID, _MIN, _MAX, _STEP) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, with --num-parts N).
    #[arg(long, value_name = "I|auto")]
    pub part_id: Option<PartArg>,
    /// Append one JSON line per case to this file (`{part}` becomes the part id): case, inputs,
    /// prompts, outputs, status, error, seconds, peak RSS.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Run again the cases whose latest line in these reports says `failed` (instead of -i/--jobs).
    #[arg(long, value_name = "REPORT", num_args = 1.., conflicts_with_all = ["jobs", "input", "prompts"])]
    pub retry_failed: Vec<PathBuf>,
    /// Device: cpu, cuda, cuda:N, metal or metal:N (default: a GPU when the binary was built
    /// with one and one is present, else cpu).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceArg>,
    /// GPU index (default 0; or give it in --device, as cuda:N).
    #[arg(long, value_name = "N")]
    pub gpu: Option<usize>,
    /// CPU threads (default: SLURM_CPUS_PER_TASK when set, else all cores).
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

/// Run `voxtell predict`; returns whether every case succeeded.
pub fn run(args: PredictArgs) -> anyhow::Result<bool> {
    let log = Log { quiet: args.quiet, verbose: args.verbose };
    // Conflicting device flags are refused before any input is read.
    let gpu = gpu_index(args.device, args.gpu)?;
    let threads = args.threads.or_else(|| {
        std::env::var("SLURM_CPUS_PER_TASK")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&n: &usize| n > 0)
    });
    if let Some(n) = threads {
        ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    let bank = load_bank(args.no_precomputed, args.embeddings.as_deref(), &log)?;
    if args.list_embeddings {
        ensure!(
            !args.no_precomputed,
            "--list-embeddings lists the precomputed bank, which --no-precomputed turns off"
        );
        ensure!(
            !bank.is_empty(),
            "no embedding bank to list: looked at {}",
            voxtell::fusion::bank_search_places(args.embeddings.as_deref())
        );
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
    let part = Part::resolve(args.part_id, args.num_parts, &|name| std::env::var(name).ok())?;
    let mut jobs = match &args.jobs {
        Some(jobs) => read_jobs(jobs)?,
        None if !args.retry_failed.is_empty() => cohort::failed_jobs(&args.retry_failed)?,
        None => jobs_from_inputs(&args.input, &args.prompts)?,
    };
    if let Some(p) = part {
        let total = jobs.len();
        jobs = p.select(jobs);
        log.info(format!("part {} of {} (0-based): {} of {total} case(s)", p.id, p.count, jobs.len()));
        voxtell::io::atomic::set_run_tag(&p.tag());
    }
    if jobs.is_empty() {
        log.info("nothing to do: no cases".to_string());
        return Ok(true);
    }
    let report = args.report.as_deref().map(|r| cohort::Report::open(r, part)).transpose()?;
    let cancel = CancelToken::new();
    let notes = Arc::new(CaseNotes::default());
    let batch = Batch::new(
        jobs,
        BatchOptions {
            writers: writers(&args)?,
            skip_existing: args.no_overwrite,
            keep_largest: args.keep_largest,
            dicom: DicomOptions { series_uid: args.series.clone(), ..Default::default() },
            cancel: cancel.clone(),
            ..BatchOptions::new(out_dir, Vec::new())
        },
    )?;
    if let Some(p) = part {
        let removed = voxtell::io::atomic::remove_stale(&batch.options().out_dir, &p.tag())?;
        if removed > 0 {
            log.info(format!("removed {removed} temporary file(s) left by an earlier run of this part"));
        }
    }
    let skipped = batch.cases().len() - batch.pending();
    if skipped > 0 {
        log.info(format!("skipping {skipped} case(s) whose outputs all exist (--no-overwrite)"));
    }
    if let Some(report) = &report {
        report.skipped(&batch)?;
    }
    if batch.pending() == 0 {
        log.info("nothing to do".to_string());
        return Ok(true);
    }

    // Prompts first: an unknown prompt fails before any image work, and a text model needed for
    // them is dropped before the segmentation model is loaded.
    let device = pick_device(args.device, gpu, &log);
    let t0 = Instant::now();
    let (vectors, model_dir, folder) =
        locate(bank, args.text_model.as_deref(), &args.text_dtype, &device, args.model.as_deref())?;
    let loading = || format!("loading the model from {}", model_dir.display());
    let options = PredictOptions {
        step_size: args.step_size,
        accumulate: args.accumulate.parse::<Accumulate>()?,
        max_memory: args.max_memory,
        keep_logits: false,
        precision: if args.precision == "bf16" { ConvPrecision::Bf16 } else { ConvPrecision::F32 },
    };
    if options.precision == ConvPrecision::Bf16 {
        if !device.is_cpu() {
            log.info(
                "--precision bf16 applies to the CPU kernels; on this device the network runs in f32".into(),
            );
        } else if !voxtell::vision::ops::bf16_supported() {
            log.info("this CPU has no AVX-512 BF16: --precision bf16 falls back to f32".to_string());
        }
    }
    let mut predictor =
        Predictor::open(&folder, vectors, options, &device, &batch.prompts()).map_err(|e| match e {
            voxtell::infer::InferError::Model(_) | voxtell::infer::InferError::Tensor(_) => {
                anyhow::Error::new(e).context(loading())
            }
            e => e.into(),
        })?;
    for notice in predictor.notices() {
        log.verbose(notice.clone());
    }
    log.verbose(format!("model: {}", model_dir.display()));
    log.verbose(format!("prompts and model ready in {:.1} s", t0.elapsed().as_secs_f64()));

    {
        let cancel = cancel.clone();
        let mut interrupted = false;
        // The first Ctrl-C stops after the cases already predicted are written; a second ends
        // the process at once (outputs are renamed into place only when complete, so no output
        // name ever holds a partial file; a temporary file being written may remain).
        let _ = ctrlc::set_handler(move || {
            if std::mem::replace(&mut interrupted, true) {
                std::process::exit(130);
            }
            cancel.cancel();
            eprintln!(
                "\ninterrupted: writing the cases already predicted, then stopping (Ctrl-C again to quit now)"
            );
        });
    }
    // The range of voxel spacings the model was trained on, when its voxtell.json records one.
    let training = predictor.training_spacing();
    let recorded_in = model_dir.join("voxtell.json");
    let progress = Progress::new(&log, batch.pending()).with_notes(notes.clone());
    let report_error = std::sync::Mutex::new(None);
    let records = predictor.run_batch(&batch, &|e| {
        // A scan outside the model's training spacings is still segmented; the warning comes
        // with the case's "wrote" (or error) line.
        if let (Event::Read { name, image, .. }, Some(range)) = (e, &training)
            && let Some(w) = range.warning(image.geometry.spacing())
        {
            let file = recorded_in.display();
            notes.add(name, format!("warning: {name}: {w}, recorded in {file}; its masks may be poor"));
        }
        progress.show(e);
        if let (Some(report), Event::Written(r) | Event::Failed(r)) = (&report, e)
            && let Err(err) = report.record(&batch, r)
            && let Ok(mut slot) = report_error.lock()
        {
            slot.get_or_insert(err);
        }
    })?;
    if let Some(err) = report_error.into_inner().ok().flatten() {
        return Err(err);
    }
    if cancel.is_cancelled() {
        eprintln!("stopped by the user");
        std::process::exit(130);
    }
    let failed: Vec<_> = records.iter().filter(|r| r.status == CaseStatus::Failed).collect();
    if !failed.is_empty() {
        eprintln!("{} of {} case(s) failed (reasons above):", failed.len(), batch.pending());
        for r in failed {
            eprintln!("  {}", r.source);
        }
        return Ok(false);
    }
    log.info(format!("{} case(s) done in {:.1} s", batch.pending(), t0.elapsed().as_secs_f64()));
    Ok(true)
}

/// The writers the flags ask for, in the order their files are listed.
fn writers(args: &PredictArgs) -> anyhow::Result<Vec<Arc<dyn OutputWriter>>> {
    let mut w: Vec<Arc<dyn OutputWriter>> = Vec::new();
    if args.output_type.contains(&OutputType::Nifti) {
        w.push(if args.save_combined { Arc::new(CombinedMap) } else { Arc::new(MaskFiles) });
    } else {
        ensure!(!args.save_combined, "--save-combined writes a NIfTI label map: add nifti to --output-type");
    }
    if args.output_type.contains(&OutputType::DicomSeg) {
        w.push(Arc::new(DicomSegFile::default()));
    }
    if args.save_probabilities {
        w.push(Arc::new(ProbabilityMaps));
    }
    if args.statistics {
        w.push(Arc::new(StatisticsFile));
    }
    if args.preview {
        w.push(Arc::new(PreviewImage));
    }
    Ok(w)
}

/// --jobs: a JSON file or an inline JSON string.
fn read_jobs(jobs: &str) -> anyhow::Result<Vec<voxtell::infer::Job>> {
    let text = if std::path::Path::new(jobs).is_file() {
        std::fs::read_to_string(jobs).with_context(|| format!("reading the jobs file {jobs}"))?
    } else if jobs.trim_start().starts_with('[') {
        jobs.to_string()
    } else {
        anyhow::bail!("--jobs {jobs:?} is neither a file nor inline JSON")
    };
    Ok(jobs_from_json(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_a_file_or_inline_json() {
        assert_eq!(read_jobs(r#"[{"image": "a.nii.gz", "prompts": "liver"}]"#).unwrap().len(), 1);
        assert!(read_jobs("no-such-file.json").is_err());
    }
}
