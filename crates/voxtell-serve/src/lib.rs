//! VoxTell over HTTP: the API of the official `voxtell-server` (PyPI `voxtell` 0.1.2), which the
//! napari-voxtell plugin's remote mode speaks, served by the Rust engine.
//!
//! A client uploads a scan once (`POST /images`: NIfTI, or a zip of one DICOM series), starts
//! jobs on it (`POST /jobs` with prompts), follows each job's progress as NDJSON
//! (`GET /jobs/{id}/events`), downloads the masks (`GET /jobs/{id}/result`: uint8
//! `(N, Z, Y, X)` in nnU-Net's reoriented space, as a VXA2 payload) and can export a label map
//! back to the scan's own orientation (`POST /images/{id}/export`); for a scan uploaded as a
//! DICOM series, the masks also come as one DICOM SEG over its slices (`GET /jobs/{id}/seg.dcm`,
//! not in the official server). The routes, bodies, headers
//! and status codes are the official server's; what differs is documented in `docs/serve.md`
//! (bad input is a 4xx with a JSON detail, never a 500; queued jobs say so; memory is bounded).
//!
//! The work runs through the library's batch API ([`voxtell_infer::Predictor::run_batch`]) on one
//! worker thread that owns the model: jobs run one at a time, in order, while the HTTP side
//! (a tokio runtime with axum) keeps answering health checks, uploads and downloads.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use voxtell_infer::{PredictOptions, Predictor};
//! use voxtell_serve::{ServeConfig, Server};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let predictor: Predictor = unimplemented!();
//! let listener = TcpListener::bind("127.0.0.1:1527")?;
//! let server = Server::start(listener, predictor, ServeConfig::new("voxtell_v1.1"))?;
//! println!("serving on http://{}", server.local_addr());
//! server.wait_for_signal()?;
//! # Ok(()) }
//! ```

mod api;
mod engine;
mod error;
mod events;
mod pyjson;
mod seg;
mod state;
mod upload;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use voxtell_infer::Predictor;

pub use error::ServeError;
pub use upload::ZipLimits;

/// How a server behaves.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The name `/capabilities` reports (the official server: the model folder's name).
    pub model_name: String,
    /// A key every route but `/healthz` requires as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body, and largest decoded image (NIfTI voxel data, DICOM zip contents).
    pub max_upload: u64,
    /// Memory for cached images and unfetched results together; least recently used entries
    /// go first, never an image with a queued or running job.
    pub cache_memory: u64,
    /// Images unused and finished jobs older than this are dropped.
    pub idle_timeout: Duration,
    /// Caps on a DICOM zip upload.
    pub zip: ZipLimits,
    /// Print one line per upload, job and eviction on stderr.
    pub log: bool,
    /// Called on the worker thread after each job, once its memory is freed: a binary with its
    /// own allocator gives the freed memory back here, so an idle server is small.
    pub after_job: Option<fn()>,
}

impl ServeConfig {
    /// The defaults of `voxtell serve` for a model called `model_name`: no key, 2 GiB uploads,
    /// a 4 GiB cache, one hour idle timeout, logging on.
    pub fn new(model_name: impl Into<String>) -> Self {
        ServeConfig {
            model_name: model_name.into(),
            api_key: None,
            max_upload: 2 << 30,
            cache_memory: 4 << 30,
            idle_timeout: Duration::from_secs(3600),
            zip: ZipLimits::default(),
            log: true,
            after_job: None,
        }
    }
}

/// A running server: the HTTP side on its own runtime thread, the model on its worker thread.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    shared: Arc<state::Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serve on `listener` with `predictor` (whose bank and text model answer the prompts).
    /// Returns once the server accepts connections.
    pub fn start(
        listener: TcpListener,
        predictor: Predictor,
        config: ServeConfig,
    ) -> Result<Server, ServeError> {
        let addr =
            listener.local_addr().map_err(|e| ServeError::Bind { addr: "listener".into(), source: e })?;
        listener.set_nonblocking(true).map_err(|e| ServeError::Bind { addr: addr.to_string(), source: e })?;
        let (shared, jobs_rx) = state::Shared::new(config, &predictor)?;
        let worker = engine::spawn(predictor, Arc::clone(&shared), jobs_rx)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("voxtell-http")
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        let http_shared = Arc::clone(&shared);
        let http = std::thread::Builder::new()
            .name("voxtell-serve".into())
            .spawn(move || runtime.block_on(api::serve(listener, http_shared, rx)))
            .map_err(ServeError::Runtime)?;
        Ok(Server { addr, shared, shutdown: Some(tx), http: Some(http), worker: Some(worker) })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's private scratch folder (DICOM uploads, exports and DICOM SEGs while they
    /// are made; each request removes its own files, and the folder goes when the server ends).
    pub fn scratch_dir(&self) -> &std::path::Path {
        self.shared.scratch.path()
    }

    /// Stop: cancel the running and queued jobs, answer the requests in flight (event streams
    /// end with their job's terminal line), and return when both threads have ended.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop()
    }

    /// Serve until Ctrl-C or SIGTERM, then [`Server::shutdown`].
    pub fn wait_for_signal(mut self) -> Result<(), ServeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        runtime.block_on(signal());
        if self.shared.config.log {
            eprintln!("voxtell serve: stopping (cancelling jobs, answering requests in flight)");
        }
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ServeError> {
        self.shared.close();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let mut result = Ok(());
        if let Some(h) = self.http.take() {
            result = h.join().unwrap_or(Err(ServeError::Crashed("http")));
        }
        if let Some(w) = self.worker.take()
            && w.join().is_err()
            && result.is_ok()
        {
            result = Err(ServeError::Crashed("worker"));
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
