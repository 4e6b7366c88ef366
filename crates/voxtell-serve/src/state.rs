//! What the server holds: the uploaded images (reoriented, compact), the jobs with their event
//! lines, the queue, and the results not yet reaped — with the cache's memory accounting, its
//! least-recently-used eviction, and the reaping of idle entries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Instant;

use ndarray::Array3;
use voxtell_infer::{CancelToken, Predictor, human_bytes};
use voxtell_io::{DicomSeries, RasGeometry, RasVolume};

use crate::ServeConfig;
use crate::error::{ApiError, ServeError};

/// Everything the HTTP side and the worker share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ServeConfig,
    reg: Mutex<Registry>,
    jobs_tx: Mutex<Option<mpsc::Sender<String>>>,
    /// The bank's prompts, sorted (`/capabilities`).
    pub(crate) bank_labels: Vec<String>,
    /// The bank's prompts, lowercased (the bank's key).
    known: HashSet<String>,
    /// Whether prompts missing from the bank can be embedded.
    pub(crate) text_model: bool,
    pub(crate) patch_size: [usize; 3],
    /// A private folder for exports, DICOM uploads and DICOM SEGs, removed when the server ends.
    pub(crate) scratch: tempfile::TempDir,
    /// One permit: DICOM SEGs are built one at a time, so their memory does not add up.
    pub(crate) seg_builds: Arc<tokio::sync::Semaphore>,
    closing: AtomicBool,
}

/// The mutable state, under one lock (held only for bookkeeping, never during work).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    images: HashMap<String, Image>,
    jobs: HashMap<String, Arc<JobShared>>,
    results: HashMap<String, CachedResult>,
    queue: VecDeque<String>,
    running: Option<String>,
    /// Use counter for least-recently-used order.
    tick: u64,
    /// Bytes of cached images and results.
    cached: u64,
}

impl Registry {
    /// The images of queued and running jobs: never evicted or reaped.
    fn pinned_images(&self) -> HashSet<String> {
        self.queue
            .iter()
            .chain(self.running.iter())
            .filter_map(|j| self.jobs.get(j).map(|j| j.image_id.clone()))
            .collect()
    }
}

/// A cached image.
#[derive(Debug)]
struct Image {
    data: Arc<StoredImage>,
    last_used: Instant,
    tick: u64,
}

/// A finished job's masks, as the VXA2 payload `GET /jobs/{id}/result` sends.
#[derive(Debug)]
struct CachedResult {
    payload: Arc<Vec<u8>>,
    tick: u64,
}

/// An uploaded image in the network's (S, A, R) layout, stored compactly.
#[derive(Debug)]
pub(crate) struct StoredImage {
    pub(crate) geometry: RasGeometry,
    pub(crate) shape: [usize; 3],
    pub(crate) voxels: Voxels,
    /// What was uploaded, for the log.
    pub(crate) source: String,
    /// The DICOM series it was read from (a zip upload; a DICOM SEG refers to its slices);
    /// `None` for NIfTI.
    pub(crate) series: Option<Arc<DicomSeries>>,
}

/// Voxel values: CT (and most integer scans) exactly as 16-bit integers, the rest as f32.
#[derive(Debug)]
pub(crate) enum Voxels {
    I16(Vec<i16>),
    F32(Vec<f32>),
}

impl StoredImage {
    /// Keep `ras` as 16-bit integers when every value is one (halving the memory), else as is,
    /// with the DICOM `series` it was read from, if any.
    pub(crate) fn new(ras: RasVolume, source: String, series: Option<DicomSeries>) -> Self {
        let shape = ras.geometry.ras_shape();
        let integral = ras.data.iter().all(|&v| v == f32::from(v as i16));
        let voxels = if integral {
            Voxels::I16(ras.data.iter().map(|&v| v as i16).collect())
        } else {
            Voxels::F32(ras.data.into_iter().collect())
        };
        StoredImage { geometry: ras.geometry, shape, voxels, source, series: series.map(Arc::new) }
    }

    /// Bytes held: the voxels, and the DICOM series' description (a few hundred bytes a slice).
    pub(crate) fn bytes(&self) -> u64 {
        let voxels = match &self.voxels {
            Voxels::I16(v) => 2 * v.len() as u64,
            Voxels::F32(v) => 4 * v.len() as u64,
        };
        voxels + self.series.as_deref().map_or(0, series_bytes)
    }

    /// The values as f32, in C order over (S, A, R).
    pub(crate) fn values(&self) -> Vec<f32> {
        match &self.voxels {
            Voxels::I16(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Voxels::F32(v) => v.clone(),
        }
    }

    /// The image for the predictor.
    pub(crate) fn to_ras(&self) -> Result<RasVolume, String> {
        let data = Array3::from_shape_vec(self.shape, self.values()).map_err(|e| e.to_string())?;
        Ok(RasVolume { data, geometry: self.geometry.clone() })
    }
}

/// About the bytes a series description holds (its strings and their bookkeeping), for the
/// cache's accounting; the same every time for the same series.
fn series_bytes(series: &DicomSeries) -> u64 {
    /// A `String`'s or `PathBuf`'s own size, plus an allocator's rounding.
    const STRING: usize = 32;
    /// A B-tree map entry's share of its node, besides key and value.
    const ENTRY: usize = 32;
    let text = |s: &str| STRING + s.len();
    let slices: usize = series
        .slices
        .iter()
        .map(|s| {
            std::mem::size_of_val(s)
                + s.path.as_os_str().len()
                + s.sop_class_uid.as_deref().map_or(0, text)
                + s.sop_instance_uid.as_deref().map_or(0, text)
        })
        .sum();
    let attributes: usize = series.attributes.values().map(|v| ENTRY + 16 + text(v)).sum();
    (std::mem::size_of::<DicomSeries>() + series.series_uid.len() + slices + attributes) as u64
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Queued,
    Running,
    Done,
    Cancelled,
    Error,
}

impl Status {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Cancelled => "cancelled",
            Status::Error => "error",
        }
    }

    pub(crate) fn is_finished(self) -> bool {
        matches!(self, Status::Done | Status::Cancelled | Status::Error)
    }
}

/// What an event line is, for replay to a stream opened late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    /// `{"done": d, "total": t}`.
    Progress,
    /// `{"event": "queued", "position": n}`.
    Queued,
    /// `{"event": "oom_fallback", "message": …}`.
    Notice,
    /// `{"status": …}`: the last line of every stream.
    Terminal,
}

/// One NDJSON line (with its newline).
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub(crate) kind: LineKind,
    pub(crate) text: String,
}

/// A job: what it runs, its status and the lines its event streams send.
#[derive(Debug)]
pub(crate) struct JobShared {
    pub(crate) id: String,
    pub(crate) image_id: String,
    pub(crate) prompts: Vec<String>,
    pub(crate) keep_largest: bool,
    pub(crate) created: Instant,
    pub(crate) cancel: CancelToken,
    pub(crate) progress: Mutex<JobProgress>,
    /// Bumped on every new line; event streams wait on it.
    pub(crate) changed: tokio::sync::watch::Sender<u64>,
}

/// The changing part of a job.
#[derive(Debug)]
pub(crate) struct JobProgress {
    pub(crate) status: Status,
    pub(crate) lines: Vec<Line>,
    pub(crate) error: Option<String>,
}

/// Event lines kept per job at most (a job has one line per tile; a runaway would be a bug).
const MAX_LINES: usize = 1 << 20;

impl JobShared {
    fn new(id: String, image_id: String, prompts: Vec<String>, keep_largest: bool) -> Self {
        JobShared {
            id,
            image_id,
            prompts,
            keep_largest,
            created: Instant::now(),
            cancel: CancelToken::new(),
            progress: Mutex::new(JobProgress { status: Status::Queued, lines: Vec::new(), error: None }),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobProgress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn status(&self) -> Status {
        self.lock().status
    }

    /// Add a line (ignored once the job is finished).
    pub(crate) fn push(&self, kind: LineKind, value: serde_json::Value) {
        {
            let mut p = self.lock();
            if p.status.is_finished() || p.lines.len() >= MAX_LINES {
                return;
            }
            p.lines.push(Line { kind, text: format!("{value}\n") });
        }
        self.changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn set_running(&self) {
        self.lock().status = Status::Running;
    }

    /// End the job with its terminal line; a job already finished stays as it ended.
    pub(crate) fn finish(&self, status: Status, error: Option<String>) {
        {
            let mut p = self.lock();
            if p.status.is_finished() {
                return;
            }
            let mut terminal = serde_json::json!({ "status": status.name() });
            if let Some(e) = &error {
                terminal["message"] = serde_json::Value::String(e.clone());
            }
            p.lines.push(Line { kind: LineKind::Terminal, text: format!("{terminal}\n") });
            p.status = status;
            p.error = error;
        }
        self.changed.send_modify(|v| *v += 1);
    }
}

/// What `GET /jobs/{id}/result` finds.
pub(crate) enum ResultState {
    Ready(Arc<Vec<u8>>),
    NotFinished(Status),
    Failed(String),
    Evicted,
}

impl Shared {
    pub(crate) fn new(
        config: ServeConfig,
        predictor: &Predictor,
    ) -> Result<(Arc<Self>, mpsc::Receiver<String>), ServeError> {
        let source = predictor.vectors_source();
        let mut bank_labels = source.bank().labels().to_vec();
        bank_labels.sort();
        let known = bank_labels.iter().map(|l| l.to_lowercase()).collect();
        let scratch =
            tempfile::Builder::new().prefix("voxtell-serve-").tempdir().map_err(ServeError::Scratch)?;
        let (tx, rx) = mpsc::channel();
        let shared = Shared {
            config,
            reg: Mutex::new(Registry::default()),
            jobs_tx: Mutex::new(Some(tx)),
            bank_labels,
            known,
            text_model: source.model_dir().is_some(),
            patch_size: predictor.model().config().patch_size,
            scratch,
            seg_builds: Arc::new(tokio::sync::Semaphore::new(1)),
            closing: AtomicBool::new(false),
        };
        Ok((Arc::new(shared), rx))
    }

    pub(crate) fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log(&self, line: impl FnOnce() -> String) {
        if self.config.log {
            eprintln!("voxtell serve: {}", line());
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Prompts neither the bank nor a text model can give a vector for.
    pub(crate) fn unknown_prompts<'a>(&self, prompts: &'a [String]) -> Vec<&'a str> {
        if self.text_model {
            return Vec::new();
        }
        prompts.iter().map(String::as_str).filter(|p| !self.known.contains(&p.to_lowercase())).collect()
    }

    /// Cache an uploaded image; returns its id. Older entries are evicted to make room.
    pub(crate) fn add_image(&self, image: StoredImage) -> Result<String, ApiError> {
        let id = new_id()?;
        let bytes = image.bytes();
        let mut reg = self.reg();
        self.make_room(&mut reg, bytes)?;
        reg.tick += 1;
        let tick = reg.tick;
        reg.cached += bytes;
        reg.images.insert(id.clone(), Image { data: Arc::new(image), last_used: Instant::now(), tick });
        Ok(id)
    }

    /// The image `id`, marked as used (`touch`) or not.
    pub(crate) fn image(&self, id: &str, touch: bool) -> Option<Arc<StoredImage>> {
        let mut reg = self.reg();
        reg.tick += 1;
        let tick = reg.tick;
        let image = reg.images.get_mut(id)?;
        if touch {
            image.last_used = Instant::now();
            image.tick = tick;
        }
        Some(Arc::clone(&image.data))
    }

    /// Queue a job on a cached image; returns its id and its place in the queue (1 = next).
    pub(crate) fn add_job(
        &self,
        image_id: &str,
        prompts: Vec<String>,
        keep_largest: bool,
    ) -> Result<(String, usize), ApiError> {
        let id = new_id()?;
        let job = Arc::new(JobShared::new(id.clone(), image_id.to_string(), prompts, keep_largest));
        let position = {
            let mut reg = self.reg();
            reg.tick += 1;
            let tick = reg.tick;
            let Some(image) = reg.images.get_mut(image_id) else {
                return Err(ApiError::not_found("Unknown image_id (upload it first)."));
            };
            // A job counts as a use of its image (the official server touches it here too).
            image.last_used = Instant::now();
            image.tick = tick;
            reg.jobs.insert(id.clone(), Arc::clone(&job));
            reg.queue.push_back(id.clone());
            reg.queue.len() + usize::from(reg.running.is_some())
        };
        if position > 1 {
            job.push(LineKind::Queued, serde_json::json!({ "event": "queued", "position": position - 1 }));
        }
        let sent =
            self.jobs_tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|tx| tx.send(id.clone()));
        if !matches!(sent, Some(Ok(()))) {
            job.finish(Status::Cancelled, None);
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "The server is shutting down.",
            ));
        }
        Ok((id, position))
    }

    pub(crate) fn job(&self, id: &str) -> Option<Arc<JobShared>> {
        self.reg().jobs.get(id).cloned()
    }

    /// The worker takes job `id` off the queue: `None` when it was cancelled while queued.
    pub(crate) fn start_job(&self, id: &str) -> Option<(Arc<JobShared>, Arc<StoredImage>)> {
        let mut reg = self.reg();
        reg.queue.retain(|q| q != id);
        let job = reg.jobs.get(id).cloned()?;
        let started = if job.status() == Status::Queued && !job.cancel.is_cancelled() {
            reg.images.get(&job.image_id).map(|i| Arc::clone(&i.data))
        } else {
            None
        };
        if started.is_some() {
            reg.running = Some(id.to_string());
            job.set_running();
        }
        let waiting: Vec<Arc<JobShared>> =
            reg.queue.iter().filter_map(|q| reg.jobs.get(q).cloned()).collect();
        drop(reg);
        for (i, j) in waiting.iter().enumerate() {
            j.push(LineKind::Queued, serde_json::json!({ "event": "queued", "position": i + 1 }));
        }
        match started {
            Some(image) => Some((job, image)),
            None => {
                // Cancelled while queued (its terminal line is written), or its image is gone.
                job.finish(Status::Error, Some("The image of this job is no longer cached.".into()));
                None
            }
        }
    }

    /// The worker is done with job `id`; `payload` is its result when it succeeded.
    pub(crate) fn end_job(
        &self,
        job: &JobShared,
        status: Status,
        error: Option<String>,
        payload: Option<Vec<u8>>,
    ) {
        let mut status = status;
        let mut error = error;
        {
            let mut reg = self.reg();
            reg.running = None;
            if let Some(payload) = payload {
                let bytes = payload.len() as u64;
                match self.make_room(&mut reg, bytes) {
                    Ok(()) => {
                        reg.tick += 1;
                        let tick = reg.tick;
                        reg.cached += bytes;
                        reg.results.insert(job.id.clone(), CachedResult { payload: Arc::new(payload), tick });
                    }
                    Err(e) => {
                        status = Status::Error;
                        error = Some(format!("The result could not be kept: {}", e.detail));
                    }
                }
            }
        }
        job.finish(status, error);
    }

    /// A job's result, marking it and its image as used.
    pub(crate) fn result(&self, job: &JobShared) -> ResultState {
        let (status, error) = {
            let p = job.lock();
            (p.status, p.error.clone())
        };
        match status {
            Status::Done => {}
            Status::Error => return ResultState::Failed(error.unwrap_or_else(|| "Inference failed.".into())),
            s => return ResultState::NotFinished(s),
        }
        let mut reg = self.reg();
        reg.tick += 1;
        let tick = reg.tick;
        if let Some(image) = reg.images.get_mut(&job.image_id) {
            image.last_used = Instant::now();
            image.tick = tick;
        }
        match reg.results.get_mut(&job.id) {
            Some(r) => {
                r.tick = tick;
                ResultState::Ready(Arc::clone(&r.payload))
            }
            None => ResultState::Evicted,
        }
    }

    /// Cancel a job: a queued one ends at once, a running one after its current tile.
    pub(crate) fn cancel(&self, job: &JobShared) {
        job.cancel.cancel();
        let queued = {
            let mut reg = self.reg();
            let queued = reg.queue.iter().any(|q| q == &job.id);
            if queued {
                reg.queue.retain(|q| q != &job.id);
            }
            queued
        };
        if queued {
            job.finish(Status::Cancelled, None);
        }
    }

    /// Evict least-recently-used entries until `bytes` more fit under `--cache-memory`; images
    /// with a queued or running job stay.
    fn make_room(&self, reg: &mut Registry, bytes: u64) -> Result<(), ApiError> {
        let limit = self.config.cache_memory;
        if bytes > limit {
            return Err(ApiError::too_large(format!(
                "{} does not fit the server's cache of {} (--cache-memory)",
                human_bytes(bytes),
                human_bytes(limit)
            )));
        }
        if reg.cached + bytes <= limit {
            return Ok(());
        }
        let pinned = reg.pinned_images();
        // (tick, is image, id)
        let mut candidates: Vec<(u64, bool, String)> = reg
            .images
            .iter()
            .filter(|(id, _)| !pinned.contains(*id))
            .map(|(id, i)| (i.tick, true, id.clone()))
            .chain(reg.results.iter().map(|(id, r)| (r.tick, false, id.clone())))
            .collect();
        candidates.sort();
        for (_, is_image, id) in candidates {
            if reg.cached + bytes <= limit {
                break;
            }
            if is_image {
                if let Some(i) = reg.images.remove(&id) {
                    let freed = i.data.bytes();
                    reg.cached -= freed;
                    self.log(|| {
                        format!(
                            "evicted image {id} ({}, {}) from the cache (--cache-memory)",
                            i.data.source,
                            human_bytes(freed)
                        )
                    });
                }
            } else if let Some(r) = reg.results.remove(&id) {
                reg.cached -= r.payload.len() as u64;
                self.log(|| format!("evicted the result of job {id} from the cache (--cache-memory)"));
            }
        }
        if reg.cached + bytes <= limit {
            return Ok(());
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "The cache (--cache-memory {}) is held by images with queued or running jobs; {} more do not fit now. Try again when they finish.",
                human_bytes(limit),
                human_bytes(bytes)
            ),
        ))
    }

    /// Drop images unused and finished jobs created longer than `--idle-timeout` ago.
    pub(crate) fn reap(&self) {
        let timeout = self.config.idle_timeout;
        let mut reg = self.reg();
        let pinned = reg.pinned_images();
        let old_images: Vec<String> = reg
            .images
            .iter()
            .filter(|(id, i)| i.last_used.elapsed() > timeout && !pinned.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in old_images {
            if let Some(i) = reg.images.remove(&id) {
                reg.cached -= i.data.bytes();
                self.log(|| {
                    format!("dropped image {id}: unused for {} s (--idle-timeout)", timeout.as_secs())
                });
            }
        }
        let old_jobs: Vec<String> = reg
            .jobs
            .iter()
            .filter(|(_, j)| j.created.elapsed() > timeout && j.status().is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in old_jobs {
            reg.jobs.remove(&id);
            if let Some(r) = reg.results.remove(&id) {
                reg.cached -= r.payload.len() as u64;
            }
        }
    }

    /// Stop taking jobs; cancel the queued ones and the running one.
    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.jobs_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let jobs: Vec<Arc<JobShared>> = {
            let mut reg = self.reg();
            reg.queue.clear();
            reg.jobs.values().cloned().collect()
        };
        for job in jobs {
            job.cancel.cancel();
            if job.status() == Status::Queued {
                job.finish(Status::Cancelled, None);
            }
        }
    }
}

/// A random 128-bit id as 32 lowercase hex digits (as `uuid4().hex` looks).
fn new_id() -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness for an id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
