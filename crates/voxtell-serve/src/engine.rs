//! The worker: one thread that owns the model and runs the queued jobs one at a time through
//! the library's batch API, turning its events into the job's event lines and its masks into
//! the VXA2 payload of `GET /jobs/{id}/result`.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use voxtell_infer::batch::error_text;
use voxtell_infer::{
    Batch, BatchOptions, CaseStatus, Event, Input, Job, OutputWriter, PredictedCase, Predictor,
};
use voxtell_wire::{EncodeOptions, WireArray};

use crate::error::ServeError;
use crate::state::{JobShared, LineKind, Shared, Status, StoredImage};

/// Start the worker thread; it ends when the job channel closes.
pub(crate) fn spawn(
    mut predictor: Predictor,
    shared: Arc<Shared>,
    jobs: Receiver<String>,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    std::thread::Builder::new()
        .name("voxtell-worker".into())
        .spawn(move || {
            for id in jobs {
                if shared.is_closing() {
                    if let Some(job) = shared.job(&id) {
                        job.finish(Status::Cancelled, None);
                    }
                    continue;
                }
                let Some((job, image)) = shared.start_job(&id) else { continue };
                let t = std::time::Instant::now();
                // A panic is a bug; the job still ends (as an error) and the worker goes on.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&mut predictor, &shared, &job, &image)
                }));
                let (status, error, payload) = outcome.unwrap_or_else(|_| {
                    (
                        Status::Error,
                        Some("internal error: the prediction crashed (see the server's log)".into()),
                        None,
                    )
                });
                shared.log(|| {
                    format!(
                        "job {id}: {} prompt(s) on image {}: {} in {:.1} s{}",
                        job.prompts.len(),
                        job.image_id,
                        status.name(),
                        t.elapsed().as_secs_f64(),
                        error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                    )
                });
                shared.end_job(&job, status, error, payload);
                drop((job, image));
                if let Some(release) = shared.config.after_job {
                    release();
                }
            }
        })
        .map_err(ServeError::Runtime)
}

/// Run one job; its ending status, error text and result payload.
fn run(
    predictor: &mut Predictor,
    shared: &Shared,
    job: &JobShared,
    image: &StoredImage,
) -> (Status, Option<String>, Option<Vec<u8>>) {
    let ras = match image.to_ras() {
        Ok(r) => Arc::new(r),
        Err(e) => return (Status::Error, Some(e), None),
    };
    let capture = Arc::new(Capture::default());
    let options = BatchOptions {
        keep_largest: job.keep_largest,
        cancel: job.cancel.clone(),
        ..BatchOptions::in_memory(vec![Arc::clone(&capture) as Arc<dyn OutputWriter>])
    };
    let batch_job = Job {
        name: job.id.clone(),
        input: Input::Ras(ras),
        prompts: job.prompts.clone(),
        cancel: job.cancel.clone(),
    };
    let batch = match Batch::new(vec![batch_job], options) {
        Ok(b) => b,
        Err(e) => return (Status::Error, Some(error_text(&e)), None),
    };
    let training = predictor.training_spacing();
    let events = |e: &Event<'_>| match e {
        // A scan outside the model's training spacings is still segmented; the stream says so
        // (clients that know no "warning" event, as napari-voxtell 0.2.0, skip the line).
        Event::Read { image, .. } => {
            if let Some(w) = training.and_then(|r| r.warning(image.geometry.spacing())) {
                let message = format!("The image's {w}; its masks may be poor.");
                shared.log(|| format!("job {}: warning: {message}", job.id));
                job.push(LineKind::Notice, serde_json::json!({ "event": "warning", "message": message }));
            }
        }
        Event::Planned { groups, .. } if groups.len() > 1 => {
            let n = groups.first().map_or(1, |g| g.len());
            job.push(
                LineKind::Notice,
                serde_json::json!({
                    "event": "oom_fallback",
                    "message": format!("Segmenting in batches of {n} prompt(s) to fit the memory budget (--max-memory)..."),
                }),
            );
        }
        Event::Tile { done, total, .. } => {
            job.push(LineKind::Progress, serde_json::json!({ "done": done, "total": total }));
        }
        _ => {}
    };
    let records = match predictor.run_batch(&batch, &events) {
        Ok(r) => r,
        Err(e) => return (Status::Error, Some(error_text(&e)), None),
    };
    if job.cancel.is_cancelled() {
        return (Status::Cancelled, None, None);
    }
    match records.into_iter().next() {
        Some(r) if r.status == CaseStatus::Written => match capture.take() {
            Some(Ok(payload)) => (Status::Done, None, Some(payload)),
            Some(Err(e)) => (Status::Error, Some(e), None),
            None => (Status::Error, Some("the prediction produced no masks".into()), None),
        },
        Some(r) if r.status == CaseStatus::Cancelled => (Status::Cancelled, None, None),
        Some(r) => (Status::Error, Some(r.error.unwrap_or_else(|| "Inference failed.".into())), None),
        None => (Status::Cancelled, None, None),
    }
}

/// The batch's writer for a server: the masks as uint8 `(N, Z, Y, X)` in the network's
/// (S, A, R) layout — nnU-Net's reoriented space, which the napari widget overlays — encoded
/// as the VXA2 payload, kept in memory. Writes no file.
#[derive(Debug, Default)]
struct Capture {
    payload: Mutex<Option<Result<Vec<u8>, String>>>,
}

impl Capture {
    fn take(&self) -> Option<Result<Vec<u8>, String>> {
        self.payload.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl OutputWriter for Capture {
    fn files(&self, _case: &str, _prompts: &[String]) -> voxtell_infer::Result<Vec<String>> {
        Ok(Vec::new())
    }

    fn write(&self, case: &PredictedCase<'_>, _dir: &Path) -> voxtell_infer::Result<Vec<PathBuf>> {
        let masks = case.masks;
        let [z, y, x] = masks.ras_shape();
        let mut data = Vec::with_capacity(masks.len() * z * y * x);
        for i in 0..masks.len() {
            data.extend(masks.mask(i)?.iter().copied());
        }
        // One blosc2 chunk (or a whole number of them) per prompt, so that the DICOM SEG route
        // decodes one mask at a time; the official decoder reads any chunking.
        let options = EncodeOptions { chunk_bytes: crate::seg::chunk_bytes([z, y, x]), ..Default::default() };
        let encoded = WireArray::from_u8(vec![masks.len(), z, y, x], data)
            .and_then(|a| voxtell_wire::encode_with(&a, &options))
            .map_err(|e| format!("encoding the masks: {e}"));
        *self.payload.lock().unwrap_or_else(|p| p.into_inner()) = Some(encoded);
        Ok(Vec::new())
    }
}
