//! Batch prediction: many cases, each an image with its own prompts, written as the caller's
//! [`OutputWriter`]s choose. Every front end (the `voxtell` command, a server, a cohort
//! worker) runs its cases through here.
//!
//! - [`Job`]: an input (a NIfTI file, a DICOM series folder, or a volume in memory), its
//!   prompts, its case name and its own [`CancelToken`]. [`jobs_from_inputs`] and
//!   [`jobs_from_json`] build them the way `voxtell predict` takes them.
//! - [`Batch`]: the jobs checked before any work — every case has prompts, no two cases or
//!   prompts write one file, cases whose outputs all exist are marked skipped when asked — with
//!   the union of the prompts to embed ([`Batch::prompts`]).
//! - [`Predictor::run_batch`]: the prompts embedded once, then read → predict → write with the
//!   next case read ahead on one thread and the last one written behind on another while the
//!   calling thread predicts. It reports [`Event`]s as it goes and ends each case in a
//!   [`CaseRecord`]: a case that fails is recorded with its error and the batch goes on.
//!
//! Every output is written whole under a temporary name and renamed into place, so a batch
//! stopped at any moment leaves no partial file under an output's name.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::{Condvar, Mutex, mpsc};
use std::time::Instant;

use serde::Serialize;
use voxtell_io::{DicomOptions, DicomSeries, RasVolume};

pub use crate::job::{CancelToken, Input, Job, jobs_from_inputs, jobs_from_json};

use crate::components;
use crate::error::{InferError, Result};
use crate::masks::Masks;
use crate::plan::Plan;
use crate::predict::{PredictOptions, Predictor};
use crate::preprocess::Prepared;
use crate::writers::{OutputWriter, PredictedCase};

/// How a batch writes and what it skips.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// The output folder (created when the batch is made).
    pub out_dir: PathBuf,
    /// The writers of each case, in order (see [`crate::writers`]).
    pub writers: Vec<Arc<dyn OutputWriter>>,
    /// Skip a case whose outputs all exist already (resume an interrupted run).
    pub skip_existing: bool,
    /// Keep only the largest 6-connected component of each mask before writing.
    pub keep_largest: bool,
    /// Which series to read from DICOM folders holding several.
    pub dicom: DicomOptions,
    /// Stops the whole batch: the case being predicted is dropped, the cases already predicted
    /// are still written, nothing after is started.
    pub cancel: CancelToken,
}

impl BatchOptions {
    /// Options for writers that keep their results in memory and write no file (e.g. a
    /// server's): no output folder.
    pub fn in_memory(writers: Vec<Arc<dyn OutputWriter>>) -> Self {
        Self::new(PathBuf::new(), writers)
    }

    /// Options writing with `writers` into `out_dir`, skipping nothing.
    pub fn new(out_dir: impl Into<PathBuf>, writers: Vec<Arc<dyn OutputWriter>>) -> Self {
        BatchOptions {
            out_dir: out_dir.into(),
            writers,
            skip_existing: false,
            keep_largest: false,
            dicom: DicomOptions::default(),
            cancel: CancelToken::new(),
        }
    }
}

/// A job with its output files.
#[derive(Debug, Clone)]
pub struct Case {
    /// The job.
    pub job: Job,
    /// The files its writers write, relative to the output folder, in writer order.
    pub outputs: Vec<String>,
    /// Whether the case is skipped ([`BatchOptions::skip_existing`] and every writer's outputs
    /// are there, [`OutputWriter::finished`]).
    pub skip: bool,
}

/// Jobs checked and ready to run ([`Predictor::run_batch`]).
#[derive(Debug, Clone)]
pub struct Batch {
    cases: Vec<Case>,
    options: BatchOptions,
}

impl Batch {
    /// Check `jobs` before any work: at least one job, every job with prompts, every output
    /// name taken by one case only (two prompts of a case that would write one file, or two
    /// images with one case name, are errors naming both), at least one writer. Creates the
    /// output folder (when a writer writes files), and marks the cases to skip.
    pub fn new(jobs: Vec<Job>, options: BatchOptions) -> Result<Batch> {
        if jobs.is_empty() {
            return Err(InferError::Invalid("no input images".to_string()));
        }
        if options.writers.is_empty() {
            return Err(InferError::Option {
                option: "writers",
                reason: "no output writer: nothing would be written".to_string(),
            });
        }
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut cases = Vec::with_capacity(jobs.len());
        for job in jobs {
            let source = job.input.describe();
            if job.prompts.is_empty() {
                return Err(InferError::Invalid(format!("{source}: no prompts")));
            }
            let mut outputs = Vec::new();
            for w in &options.writers {
                w.check(&job)?;
                outputs.extend(w.files(&job.name, &job.prompts)?);
            }
            if let Some(f) = outputs.iter().find(|f| voxtell_io::atomic::is_temp_name(f.as_ref())) {
                return Err(InferError::Invalid(format!(
                    "{source}: its output {f} would look like a temporary file of an interrupted write (a name starting with {}); rename the input",
                    voxtell_io::atomic::TEMP_PREFIX
                )));
            }
            for f in &outputs {
                // The same image twice writes the same files twice: harmless.
                if let Some(prev) = owner.insert(f.clone(), source.clone())
                    && prev != source
                {
                    return Err(InferError::Invalid(format!(
                        "{prev} and {source} would both write {f}; give the inputs different names (or one job per image)"
                    )));
                }
            }
            cases.push(Case { job, outputs, skip: false });
        }
        // Writers that keep their results in memory need no folder.
        if cases.iter().any(|c| !c.outputs.is_empty()) {
            std::fs::create_dir_all(&options.out_dir).map_err(|e| InferError::Output {
                path: options.out_dir.clone(),
                reason: format!("cannot create the output folder: {e}"),
            })?;
        }
        if options.skip_existing {
            for c in &mut cases {
                c.skip =
                    options.writers.iter().all(|w| w.finished(&options.out_dir, &c.job.name, &c.job.prompts));
            }
        }
        Ok(Batch { cases, options })
    }

    /// The cases, in order.
    pub fn cases(&self) -> &[Case] {
        &self.cases
    }

    /// The options.
    pub fn options(&self) -> &BatchOptions {
        &self.options
    }

    /// Cases that will run (not skipped).
    pub fn pending(&self) -> usize {
        self.cases.iter().filter(|c| !c.skip).count()
    }

    /// The prompts of the cases that will run, each once, in first-seen order: embed them
    /// before loading the model ([`Predictor::open`]).
    pub fn prompts(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.cases
            .iter()
            .filter(|c| !c.skip)
            .flat_map(|c| c.job.prompts.iter().map(String::as_str))
            .filter(|p| seen.insert(*p))
            .collect()
    }
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    /// Every output written.
    Written,
    /// Skipped: its outputs all existed.
    Skipped,
    /// Reading, predicting or writing failed ([`CaseRecord::error`]).
    Failed,
    /// Its job (or the batch) was cancelled before its outputs were written.
    Cancelled,
}

/// The end of one case, for a caller to log.
#[derive(Debug, Clone, Serialize)]
pub struct CaseRecord {
    /// Position in the batch.
    pub index: usize,
    /// Case name.
    pub name: String,
    /// The image ([`Input::describe`]).
    pub source: String,
    /// How it ended.
    pub status: CaseStatus,
    /// Why it failed.
    pub error: Option<String>,
    /// The option a user could change to get past the error ([`InferError::option`]).
    pub option: Option<&'static str>,
    /// Seconds reading, predicting and writing (each 0 when not reached).
    pub read_seconds: f64,
    /// Seconds predicting.
    pub predict_seconds: f64,
    /// Seconds writing.
    pub write_seconds: f64,
    /// Of `predict_seconds`, the seconds inside the network's forward passes
    /// ([`Masks::network_seconds`]).
    pub network_seconds: f64,
    /// Tiles run (over all prompt groups).
    pub tiles: usize,
    /// The prompts whose mask is empty (after any post-processing), in prompt order.
    pub empty_prompts: Vec<String>,
    /// Files written.
    pub outputs: Vec<PathBuf>,
}

impl CaseRecord {
    fn new(index: usize, case: &Case, status: CaseStatus) -> Self {
        Self::named(index, case.job.name.clone(), case.job.input.describe(), status)
    }

    fn named(index: usize, name: String, source: String, status: CaseStatus) -> Self {
        CaseRecord {
            index,
            name,
            source,
            status,
            error: None,
            option: None,
            read_seconds: 0.0,
            predict_seconds: 0.0,
            write_seconds: 0.0,
            network_seconds: 0.0,
            tiles: 0,
            empty_prompts: Vec::new(),
            outputs: Vec::new(),
        }
    }

    fn fail(mut self, e: &InferError) -> Self {
        if matches!(e, InferError::Cancelled) {
            self.status = CaseStatus::Cancelled;
        } else {
            self.status = CaseStatus::Failed;
            self.error = Some(error_text(e));
            self.option = e.option();
        }
        self
    }
}

/// What a batch reports while it runs. `case` is the position in the batch, `cases` the
/// batch's length.
#[derive(Debug)]
pub enum Event<'a> {
    /// A case whose outputs all exist was skipped.
    Skipped(&'a CaseRecord),
    /// A case's image is read (on the reading thread, ahead of its prediction): its geometry,
    /// e.g. for a warning about a voxel spacing the model was not trained on.
    Read {
        /// Position.
        case: usize,
        /// Case name.
        name: &'a str,
        /// The image in the network's (S, A, R) layout.
        image: &'a RasVolume,
    },
    /// A case's prediction starts.
    Started {
        /// Position.
        case: usize,
        /// Cases in the batch.
        cases: usize,
        /// Case name.
        name: &'a str,
    },
    /// How the case will run: its prompt groups (one pass over the tiles each).
    Planned {
        /// Position.
        case: usize,
        /// Case name.
        name: &'a str,
        /// The memory plan.
        plan: &'a Plan,
        /// The prompts of each group, in order.
        groups: Vec<&'a [String]>,
    },
    /// A tile is done.
    Tile {
        /// Position.
        case: usize,
        /// The prompt group (0-based) being run.
        group: usize,
        /// Prompt groups.
        groups: usize,
        /// Tiles done in this group.
        done: usize,
        /// Tiles of each group.
        total: usize,
    },
    /// The prediction is done and goes to the writers.
    Predicted {
        /// Position.
        case: usize,
        /// Case name.
        name: &'a str,
        /// Tiles run over all groups.
        tiles: usize,
        /// Seconds predicting.
        seconds: f64,
    },
    /// Every output of a case is written.
    Written(&'a CaseRecord),
    /// A case failed or was cancelled; the batch goes on.
    Failed(&'a CaseRecord),
}

/// A case read and prepared for the network, or why it could not be.
struct ReadCase {
    index: usize,
    seconds: f64,
    result: Result<(Loaded, Prepared)>,
}

/// A case's image in the network's layout and, for a DICOM series, the series it came from.
struct Loaded {
    image: Arc<RasVolume>,
    source: Option<Arc<DicomSeries>>,
}

/// A finished prediction on its way to the writer.
struct ToWrite {
    index: usize,
    masks: Masks,
    loaded: Loaded,
    record: CaseRecord,
    /// What the writer holds while writing it.
    bytes: u64,
}

/// The memory the three stages of a batch hold, so that together they stay within one budget:
/// the predictor plans each case with what the case read ahead and the case being written hold
/// taken off the budget, and the reader starts reading ahead only when its estimate fits beside
/// the running prediction's plan and the case being written (or when nothing else runs).
struct Ledger {
    budget: u64,
    held: Mutex<Held>,
    changed: Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct Held {
    ahead: u64,
    predicting: u64,
    behind: u64,
}

impl Ledger {
    fn new(budget: u64) -> Self {
        Ledger { budget, held: Mutex::new(Held::default()), changed: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay meaningful even if a stage panicked while holding the lock.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait for a change (at most 200 ms, so callers re-check what they wait on).
    fn wait<'a>(&self, held: std::sync::MutexGuard<'a, Held>) -> std::sync::MutexGuard<'a, Held> {
        match self.changed.wait_timeout(held, std::time::Duration::from_millis(200)) {
            Ok((h, _)) => h,
            Err(e) => e.into_inner().0,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Held)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Wait until `estimate` bytes fit beside the other stages (or nothing else runs, or the
    /// batch is stopped), then reserve them for the case read ahead.
    fn reserve_ahead(&self, estimate: u64, stop: &CancelToken) {
        let mut held = self.lock();
        loop {
            let busy = held.predicting.saturating_add(held.behind);
            if busy == 0 || busy.saturating_add(estimate) <= self.budget || stop.is_cancelled() {
                held.ahead = estimate;
                return;
            }
            // Woken by every change; the timeout only re-checks the stop flag.
            held = self.wait(held);
        }
    }

    /// The case read ahead moves to the predictor: plan it (under the lock, so the reader sees
    /// the plan before it reserves again) with what the writer holds taken off the budget.
    /// A case that does not fit beside the one being written waits for the writer, then is
    /// planned with the whole budget.
    fn start_predicting(&self, input: u64, mut plan: impl FnMut(u64) -> Result<Plan>) -> Result<Plan> {
        let mut held = self.lock();
        held.ahead = 0;
        held.predicting = input;
        let mut planned = plan(held.behind);
        while planned.is_err() && held.behind > 0 {
            held = self.wait(held);
            if held.behind == 0 {
                planned = plan(0);
            }
        }
        held.predicting = match &planned {
            Ok(p) => p.estimated_bytes.max(input),
            Err(_) => 0,
        };
        drop(held);
        self.changed.notify_all();
        planned
    }
}

impl Predictor {
    /// Run a batch: embed the prompts of its pending cases once ([`Predictor::prepare`]; a
    /// prompt that can be neither looked up nor embedded is an error before any image is
    /// read), then each case — read and prepare, predict, write — with the next case read and
    /// prepared ahead on one thread and the last one written behind on another while the
    /// calling thread predicts. The three stages share one memory budget
    /// ([`PredictOptions::max_memory`], else 80 % of the memory available when the batch
    /// starts): each case is planned with what the case read ahead and the case being written
    /// hold taken off it ([`Plan::held_bytes`]), and a case is read ahead only when its
    /// estimate ([`Input::estimated_bytes`]) fits. Returns one record per case, in batch
    /// order; a case that fails does not stop the others. When the batch is cancelled, the
    /// cases not reached have no record.
    pub fn run_batch(
        &mut self,
        batch: &Batch,
        events: &(dyn Fn(&Event<'_>) + Sync),
    ) -> Result<Vec<CaseRecord>> {
        let mut records = Vec::with_capacity(batch.cases.len());
        for (i, c) in batch.cases.iter().enumerate().filter(|(_, c)| c.skip) {
            let r = CaseRecord::new(i, c, CaseStatus::Skipped);
            events(&Event::Skipped(&r));
            records.push(r);
        }
        self.prepare(&batch.prompts())?;
        let mut options = self.options().clone();
        options.keep_logits |= batch.options.writers.iter().any(|w| w.needs_logits());
        // One budget for the whole batch, measured once.
        let ledger = Ledger::new(crate::plan::budget(&options));
        options.max_memory = Some(ledger.budget);
        let this = &*self;
        let pending: Vec<usize> = (0..batch.cases.len()).filter(|&i| !batch.cases[i].skip).collect();
        let pending = pending.as_slice();
        let ledger = &ledger;
        records.extend(std::thread::scope(|scope| {
            this.pipeline(scope, batch, pending, &options, ledger, events)
        }));
        records.sort_by_key(|r| r.index);
        Ok(records)
    }

    /// The three stages of [`Predictor::run_batch`]; returns the records of `pending`.
    fn pipeline<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        batch: &'env Batch,
        pending: &'env [usize],
        options: &PredictOptions,
        ledger: &'env Ledger,
        events: &'env (dyn Fn(&Event<'_>) + Sync),
    ) -> Vec<CaseRecord> {
        let stop = &batch.options.cancel;
        let patch = self.model().config().patch_size;
        // Hand-overs without a queue: at most one case read ahead and one written behind.
        let (read_tx, read_rx) = mpsc::sync_channel::<ReadCase>(0);
        let (write_tx, write_rx) = mpsc::sync_channel::<ToWrite>(0);
        let reader = scope.spawn(move || {
            for &i in pending {
                if stop.is_cancelled() {
                    break;
                }
                let job = &batch.cases[i].job;
                ledger.reserve_ahead(job.input.estimated_bytes(patch), stop);
                let t = Instant::now();
                let result = if job.cancel.is_cancelled() || stop.is_cancelled() {
                    Err(InferError::Cancelled)
                } else {
                    read_and_prepare(job, batch, patch)
                };
                if let Ok((loaded, _)) = &result {
                    events(&Event::Read { case: i, name: &job.name, image: &loaded.image });
                }
                let bytes = result
                    .as_ref()
                    .map_or(0, |(loaded, prepared)| image_bytes(&loaded.image) + prepared.bytes());
                ledger.update(|h| h.ahead = bytes);
                let read = ReadCase { index: i, seconds: t.elapsed().as_secs_f64(), result };
                if read_tx.send(read).is_err() {
                    break;
                }
            }
            ledger.update(|h| h.ahead = 0);
        });
        let writer = scope.spawn(move || {
            let mut done = Vec::new();
            for w in write_rx {
                ledger.update(|h| h.behind = w.bytes);
                done.push(write_case(w, batch, events));
                ledger.update(|h| h.behind = 0);
            }
            done
        });
        let mut records = Vec::new();
        for ReadCase { index: i, seconds, result } in read_rx {
            let case = &batch.cases[i];
            let mut record = CaseRecord::new(i, case, CaseStatus::Written);
            record.read_seconds = seconds;
            let t = Instant::now();
            let result = result.and_then(|(loaded, prepared)| {
                let input = image_bytes(&loaded.image) + prepared.bytes();
                let masks =
                    self.predict_case(i, batch, &loaded.image, &prepared, input, options, ledger, events)?;
                Ok((masks, loaded))
            });
            record.predict_seconds = t.elapsed().as_secs_f64();
            match result {
                Ok((masks, loaded)) => {
                    record.tiles = masks.plan().tiles * masks.plan().passes;
                    record.network_seconds = masks.network_seconds();
                    events(&Event::Predicted {
                        case: i,
                        name: &case.job.name,
                        tiles: record.tiles,
                        seconds: record.predict_seconds,
                    });
                    // The writer also makes one whole-volume mask at a time.
                    let bytes = image_bytes(&loaded.image) + masks.bytes() + loaded.image.data.len() as u64;
                    let sent = write_tx.send(ToWrite { index: i, masks, loaded, record, bytes });
                    ledger.update(|h| h.predicting = 0);
                    if sent.is_err() {
                        break;
                    }
                }
                // Stopped with the batch: no record, as for the cases not reached.
                Err(InferError::Cancelled) if stop.is_cancelled() => break,
                Err(e) => {
                    ledger.update(|h| h.predicting = 0);
                    let record = record.fail(&e);
                    events(&Event::Failed(&record));
                    records.push(record);
                }
            }
            if stop.is_cancelled() {
                break;
            }
        }
        // The hand-over channel closed with the loop; a reader waiting for room must not wait
        // for a predictor that left.
        ledger.update(|h| h.predicting = 0);
        drop(write_tx);
        if reader.join().is_err() {
            records.push(crashed(batch, "reading"));
        }
        match writer.join() {
            Ok(written) => records.extend(written),
            Err(_) => records.push(crashed(batch, "writing")),
        }
        records
    }

    /// Predict case `i` of `batch` from its prepared image, reporting the plan and each tile.
    #[allow(clippy::too_many_arguments)]
    fn predict_case(
        &self,
        i: usize,
        batch: &Batch,
        image: &RasVolume,
        prepared: &Prepared,
        input_bytes: u64,
        options: &PredictOptions,
        ledger: &Ledger,
        events: &(dyn Fn(&Event<'_>) + Sync),
    ) -> Result<Masks> {
        let job = &batch.cases[i].job;
        events(&Event::Started { case: i, cases: batch.cases.len(), name: &job.name });
        let vectors = job
            .prompts
            .iter()
            .map(|p| {
                self.prepared(p)
                    .map(<[f32]>::to_vec)
                    .ok_or_else(|| InferError::Invalid(format!("prompt {p:?} was not prepared")))
            })
            .collect::<Result<Vec<_>>>()?;
        let plan = ledger.start_predicting(input_bytes, |held| {
            self.plan_with(options, prepared.ras_shape, job.prompts.len(), held)
        })?;
        let groups = plan.groups(&job.prompts);
        let n_groups = groups.len();
        events(&Event::Planned { case: i, name: &job.name, plan: &plan, groups });
        let stop = &batch.options.cancel;
        self.predict_prepared(options, image, prepared, plan, &job.prompts, &vectors, |done, total| {
            // `done` counts over all groups; each group runs the same tiles.
            let per_group = (total / n_groups.max(1)).max(1);
            let group = (done.saturating_sub(1) / per_group).min(n_groups.saturating_sub(1));
            events(&Event::Tile {
                case: i,
                group,
                groups: n_groups,
                done: done - group * per_group,
                total: per_group,
            });
            !(stop.is_cancelled() || job.cancel.is_cancelled())
        })
    }
}

/// Read a job's input, reorient it to (S, A, R), let the writers refuse what they cannot write
/// for ([`OutputWriter::check_source`]) and prepare it for a network of `patch`.
fn read_and_prepare(job: &Job, batch: &Batch, patch: [usize; 3]) -> Result<(Loaded, Prepared)> {
    let (image, source) = job.input.read_ras_with_source(&batch.options.dicom)?;
    crate::predict::check_volume(&image)?;
    for w in &batch.options.writers {
        w.check_source(job, source.as_deref())?;
    }
    let prepared = crate::preprocess::prepare(image.data.view(), patch);
    Ok((Loaded { image, source }, prepared))
}

/// Bytes of an image's voxels.
fn image_bytes(image: &RasVolume) -> u64 {
    image.data.len() as u64 * 4
}

/// Post-process and write one case; its record with the files written or the error.
fn write_case(w: ToWrite, batch: &Batch, events: &(dyn Fn(&Event<'_>) + Sync)) -> CaseRecord {
    let ToWrite { index, mut masks, loaded, mut record, .. } = w;
    let case = &batch.cases[index];
    let t = Instant::now();
    let result = (|| -> Result<Vec<PathBuf>> {
        if batch.options.keep_largest {
            for i in 0..masks.len() {
                let mut m = masks.mask(i)?;
                components::keep_largest_component(&mut m);
                masks.set_mask(i, &m)?;
            }
        }
        record.empty_prompts = (0..masks.len())
            .filter(|&i| masks.cropped_mask(i).is_none_or(|m| m.iter().all(|&v| v == 0)))
            .map(|i| case.job.prompts[i].clone())
            .collect();
        let finished = PredictedCase {
            name: &case.job.name,
            input: &case.job.input,
            prompts: &case.job.prompts,
            masks: &masks,
            image: &loaded.image,
            source: loaded.source.as_deref(),
        };
        let mut written = Vec::new();
        for writer in &batch.options.writers {
            written.extend(writer.write(&finished, &batch.options.out_dir)?);
        }
        Ok(written)
    })();
    record.write_seconds = t.elapsed().as_secs_f64();
    match result {
        Ok(outputs) => {
            record.outputs = outputs;
            events(&Event::Written(&record));
            record
        }
        Err(e) => {
            let record = record.fail(&e);
            events(&Event::Failed(&record));
            record
        }
    }
}

/// The record of a pipeline thread that panicked (a bug; the batch still reports it).
fn crashed(batch: &Batch, stage: &str) -> CaseRecord {
    let name = format!("({stage})");
    CaseRecord {
        error: Some(format!("the {stage} thread crashed")),
        ..CaseRecord::named(batch.cases.len(), name.clone(), name, CaseStatus::Failed)
    }
}

/// An error with its causes, each cause added only where the text so far does not already say
/// it (the crates' errors often include their source's text).
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_read_ahead_waits_until_it_fits_beside_the_other_stages() {
        let ledger = Ledger::new(100);
        let stop = CancelToken::new();
        // Nothing else runs: a case is read even when its estimate exceeds the budget.
        ledger.reserve_ahead(500, &stop);
        assert_eq!(ledger.lock().ahead, 500);
        // The predictor takes it and plans with what the writer holds taken off the budget.
        ledger.update(|h| h.behind = 30);
        let plan = ledger
            .start_predicting(50, |held| {
                assert_eq!(held, 30);
                Ok(Plan {
                    tiles: 1,
                    prompt_group: 1,
                    decoder_group: 1,
                    passes: 1,
                    estimated_bytes: 60,
                    budget_bytes: 100 - held,
                    held_bytes: held,
                })
            })
            .unwrap();
        assert_eq!(plan.held_bytes, 30);
        let held = *ledger.lock();
        assert_eq!((held.ahead, held.predicting, held.behind), (0, 60, 30));
        // 60 + 30 + 20 > 100: the next read waits until the writer is done.
        std::thread::scope(|s| {
            // Timed from before the spawn: the reader may start late on a busy machine.
            let t = Instant::now();
            let (l, st) = (&ledger, &stop);
            let reader = s.spawn(move || {
                l.reserve_ahead(20, st);
                t.elapsed()
            });
            std::thread::sleep(Duration::from_millis(300));
            assert_eq!(ledger.lock().ahead, 0, "read ahead although it does not fit");
            ledger.update(|h| h.behind = 0);
            assert!(reader.join().unwrap() >= Duration::from_millis(300));
        });
        assert_eq!(ledger.lock().ahead, 20);
        // A plan that fails leaves nothing counted for the predictor.
        let failed = ledger.start_predicting(20, |_| Err(InferError::Memory("too big".into())));
        assert!(failed.is_err());
        assert_eq!(ledger.lock().predicting, 0);
        // A case that fits only without the case being written waits for the writer.
        ledger.update(|h| h.behind = 70);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                ledger.update(|h| h.behind = 0);
            });
            let plan = ledger.start_predicting(10, |held| {
                if held > 0 {
                    return Err(InferError::Memory("not beside the write".into()));
                }
                Ok(Plan {
                    tiles: 1,
                    prompt_group: 1,
                    decoder_group: 1,
                    passes: 1,
                    estimated_bytes: 90,
                    budget_bytes: 100,
                    held_bytes: 0,
                })
            });
            assert_eq!(plan.unwrap().held_bytes, 0);
        });
    }

    #[test]
    fn a_stopped_batch_does_not_wait_for_room() {
        let ledger = Ledger::new(10);
        ledger.update(|h| h.predicting = 10);
        let stop = CancelToken::new();
        stop.cancel();
        ledger.reserve_ahead(5, &stop);
        assert_eq!(ledger.lock().ahead, 5);
    }
}
