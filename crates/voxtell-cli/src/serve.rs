//! `voxtell serve`: the official `voxtell-server`'s HTTP API (what napari-voxtell's remote mode
//! talks to) on this engine. The server itself is the `voxtell-serve` crate; this module turns
//! the flags into its configuration, loads the model and the bank once, and serves until Ctrl-C
//! or SIGTERM.

use std::net::{TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use voxtell::infer::{Accumulate, ConvPrecision, PredictOptions, Predictor, human_bytes};
use voxtell_serve::{ServeConfig, Server};

use crate::report::Log;
use crate::setup::{DeviceArg, gpu_index, load_bank, locate, parse_size, pick_device};

/// Arguments of `voxtell serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Interface to bind (use 0.0.0.0 only on a trusted network, with an API key).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 1527)]
    pub port: u16,
    /// Model folder (plans.json + fold_0/checkpoint_final.pth); else $VOXTELL_MODEL, else
    /// mrokuss/VoxTell voxtell_v1.1 in the Hugging Face cache.
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N, metal or metal:N (default: a GPU when the binary was built
    /// with one and one is present, else cpu).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<DeviceArg>,
    /// GPU index (default 0; or give it in --device, as cuda:N).
    #[arg(long, value_name = "N")]
    pub gpu: Option<usize>,
    /// Embedding bank (.npz, official format); else $VOXTELL_EMBEDDINGS, else the official bank
    /// in the Hugging Face cache.
    #[arg(long, value_name = "BANK")]
    pub embeddings: Option<PathBuf>,
    /// Use no embedding bank: embed every prompt with the text model.
    #[arg(long, conflicts_with = "embeddings")]
    pub no_precomputed: bool,
    /// Text-model folder for prompts missing from the bank (else $VOXTELL_TEXT_MODEL, else
    /// Qwen/Qwen3-Embedding-4B in the Hugging Face cache). Without one, such prompts are
    /// refused with 400.
    #[arg(long, value_name = "DIR")]
    pub text_model: Option<PathBuf>,
    /// Precision of the text model: f32 (default), bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "f16"])]
    pub text_dtype: String,
    /// Require `Authorization: Bearer KEY` on every route but /healthz (else $VOXTELL_API_KEY).
    /// A key on the command line shows in the process list: prefer --api-key-file.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Memory the server may use for predictions and its cache together, e.g. 16G (default:
    /// 80 % of the memory available at start).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Memory for cached images and results not yet fetched (default: half of --max-memory).
    /// The least recently used go first, never an image with a queued or running job.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache_memory: Option<u64>,
    /// Largest upload (request body and decoded image).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "2G")]
    pub max_upload: u64,
    /// Drop images unused, and finished jobs created, longer ago than this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub idle_timeout: u64,
    /// CPU threads for predictions (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Arithmetic of the network's convolutions on the CPU: f32 (the official numerics) or
    /// bf16 (on CPUs with AVX-512 BF16).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub precision: String,
    /// Print only errors (no line per upload, job and eviction).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// Run `voxtell serve` until Ctrl-C or SIGTERM; `after_job` gives memory back between jobs.
pub fn run(args: ServeArgs, after_job: fn()) -> anyhow::Result<()> {
    let log = Log { quiet: args.quiet, verbose: !args.quiet };
    // Conflicting device flags are refused before anything is read.
    let gpu = gpu_index(args.device, args.gpu)?;
    if let Some(n) = args.threads {
        ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("setting up the thread pool")?;
    }
    let api_key = api_key(&args)?;
    let (budget, cache) = memory(&args)?;
    ensure!(args.max_upload > 0, "--max-upload must be positive");
    let addr = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("--host {} --port {}: not an address", args.host, args.port))?
        .next()
        .with_context(|| format!("--host {}: no address", args.host))?;

    let bank = load_bank(args.no_precomputed, args.embeddings.as_deref(), &log)?;
    let device = pick_device(args.device, gpu, &log);
    let (vectors, model_dir, folder) =
        locate(bank, args.text_model.as_deref(), &args.text_dtype, &device, args.model.as_deref())?;
    let loading = || format!("loading the model from {}", model_dir.display());
    let options = PredictOptions {
        step_size: 0.5,
        accumulate: Accumulate::F16,
        max_memory: Some(budget - cache),
        keep_logits: false,
        precision: if args.precision == "bf16" { ConvPrecision::Bf16 } else { ConvPrecision::F32 },
    };
    log.info(format!("loading VoxTell from {} on {device:?} ...", model_dir.display()));
    let predictor = Predictor::open(&folder, vectors, options, &device, &[]).with_context(loading)?;
    for notice in predictor.notices() {
        log.info(notice.clone());
    }
    let source = predictor.vectors_source();
    if source.bank().is_empty() && source.model_dir().is_none() {
        bail!(
            "no embedding bank and no text model: no prompt could be answered (give --embeddings or --text-model)"
        );
    }
    log.info(format!(
        "{} prompts in the bank{}",
        source.bank().len(),
        match source.model_dir() {
            Some(d) => format!(", others embedded with {}", d.display()),
            None => ", no text model (other prompts are refused)".to_string(),
        }
    ));

    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    if !bound.ip().is_loopback() && api_key.is_none() {
        eprintln!(
            "warning: serving on {bound}, which is not a loopback address, without an API key: anyone who can reach it can upload scans and run jobs (set --api-key-file, or bind 127.0.0.1 and use an SSH tunnel)"
        );
    }
    let model_name = model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model_dir.display().to_string());
    let config = ServeConfig {
        api_key,
        max_upload: args.max_upload,
        cache_memory: cache,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
        log: !args.quiet,
        after_job: Some(after_job),
        ..ServeConfig::new(model_name)
    };
    let server = Server::start(listener, predictor, config)?;
    // Always printed, also with -q: with --port 0 it is the only way to learn the port.
    eprintln!(
        "Serving on http://{} (cache {}, predictions {}); Ctrl-C to stop",
        server.local_addr(),
        human_bytes(cache),
        human_bytes(budget - cache)
    );
    server.wait_for_signal()?;
    Ok(())
}

/// The key from --api-key, --api-key-file or $VOXTELL_API_KEY (empty counts as unset).
fn api_key(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let key = if let Some(file) = &args.api_key_file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("--api-key-file {}", file.display()))?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        ensure!(!key.is_empty(), "--api-key-file {}: the first line is empty", file.display());
        Some(key)
    } else {
        args.api_key.clone().or_else(|| std::env::var("VOXTELL_API_KEY").ok()).filter(|k| !k.is_empty())
    };
    if let Some(k) = &key {
        ensure!(
            k.bytes().all(|b| b.is_ascii_graphic()),
            "the API key must be printable ASCII without spaces (it travels in an HTTP header)"
        );
    }
    Ok(key)
}

/// The whole budget and the cache's share of it.
fn memory(args: &ServeArgs) -> anyhow::Result<(u64, u64)> {
    let budget = match args.max_memory {
        Some(m) => m,
        None => {
            let available = voxtell::infer::plan::available_memory()
                .context("cannot read the available memory; give --max-memory")?;
            available / 10 * 8
        }
    };
    let cache = args.cache_memory.unwrap_or(budget / 2);
    if cache >= budget {
        bail!(
            "--cache-memory {} must be below --max-memory {}: predictions need the rest",
            human_bytes(cache),
            human_bytes(budget)
        );
    }
    Ok((budget, cache))
}
