//! The routes: the official `voxtell-server` contract (see `docs/serve.md`), with bearer-key
//! authentication on every route but `/healthz`, JSON errors for everything a client can get
//! wrong, and body limits.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use voxtell_wire::WireArray;

use crate::error::{ApiError, ServeError};
use crate::state::{JobShared, ResultState, Shared, StoredImage};
use crate::{events, pyjson, seg, upload};

type AppState = Arc<Shared>;

/// Largest `POST /jobs` body.
const JOB_BODY_LIMIT: u64 = 1 << 20;

/// Serve on `listener` until `stop` fires, then finish the requests in flight.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    shared: AppState,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(ServeError::Http)?;
    let reaper = {
        let shared = Arc::clone(&shared);
        let every =
            (shared.config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                shared.reap();
            }
        })
    };
    let app = router(shared);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await
        .map_err(ServeError::Http);
    reaper.abort();
    result
}

/// The application.
fn router(shared: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/capabilities", get(capabilities))
        .route("/images", post(upload_image))
        .route("/images/{id}/export", post(export))
        .route("/jobs", post(start_job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/jobs/{id}/result", get(job_result))
        .route("/jobs/{id}/seg.dcm", get(job_seg))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .fallback(|| async { ApiError::not_found("Not Found") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), authorize))
        .layer(DefaultBodyLimit::disable())
        .with_state(shared)
}

/// Every route but `/healthz` needs `Authorization: Bearer <key>` when the server has a key,
/// compared in constant time on the exact bytes (the scheme is case-sensitive, as in the
/// official server).
async fn authorize(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &shared.config.api_key
        && request.uri().path() != "/healthz"
    {
        let expected = format!("Bearer {key}");
        let given =
            request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes).unwrap_or_default();
        if !bool::from(given.ct_eq(expected.as_bytes())) {
            // Read (and drop) a modest body first, so a client that sends before it reads gets
            // the answer rather than a reset connection.
            let _ = read_body(request.into_body(), UNAUTHORIZED_DRAIN, "").await;
            return ApiError::new(StatusCode::UNAUTHORIZED, "Invalid or missing API key.").into_response();
        }
    }
    next.run(request).await
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({ "ok": true }))
}

async fn capabilities(State(shared): State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({
        "model": shared.config.model_name,
        "patch_size": shared.patch_size,
        "available_embeddings": shared.bank_labels,
    }))
}

/// Most bytes of a request without the key read before answering 401.
const UNAUTHORIZED_DRAIN: u64 = 64 << 20;

/// Bytes read past a route's limit before answering 413 anyway: a client that sends its whole
/// body before reading the answer (most do) then gets the JSON detail instead of a broken
/// connection, and the server keeps no more than the limit in memory.
const DRAIN_LIMIT: u64 = 1 << 30;

/// Read a request body of at most `limit` bytes; a larger one is read on (and dropped) up to
/// [`DRAIN_LIMIT`] more, then answered with 413.
async fn read_body(body: Body, limit: u64, flag: &str) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut kept: Vec<u8> = Vec::new();
    let mut seen = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("Cannot read the request body: {e}")))?;
        seen += chunk.len() as u64;
        if seen <= limit {
            kept.extend_from_slice(&chunk);
        } else {
            kept = Vec::new();
            if seen > limit.saturating_add(DRAIN_LIMIT) {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(format!(
            "The request body is larger than the server takes ({}, {flag}).",
            voxtell_infer::human_bytes(limit)
        )));
    }
    Ok(Bytes::from(kept))
}

/// FastAPI's boolean query values.
fn parse_bool(name: &str, value: &str) -> Result<bool, ApiError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err(ApiError::unprocessable(format!(
            "Query parameter {name}={value:?} is not a boolean (true/false, 1/0, yes/no, on/off)."
        ))),
    }
}

/// `POST /images?include_image=<bool>`: the raw bytes of a NIfTI file (`.nii.gz` or `.nii`) or
/// of a zip holding one DICOM series. Answers the id, spacing and shape in `X-Meta`, and the
/// reoriented image as float32 `(Z, Y, X)` VXA2 unless `include_image=false`.
async fn upload_image(
    State(shared): State<AppState>,
    RawQuery(query): RawQuery,
    raw: Body,
) -> Result<Response, ApiError> {
    let raw = read_body(raw, shared.config.max_upload, "--max-upload").await?;
    let mut include_image = true;
    for pair in query.as_deref().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "include_image" {
            include_image = parse_bool(k, v)?;
        }
    }
    let work = Arc::clone(&shared);
    let (id, meta, payload) = blocking(move || {
        let config = &work.config;
        let up = upload::read(&raw, config.max_upload, config.cache_memory, config.zip, work.scratch.path())?;
        drop(raw);
        let shape = up.ras.geometry.ras_shape();
        let spacing = up.ras.geometry.spacing();
        let payload = if include_image {
            let data = up.ras.data.as_standard_layout();
            let values = data.as_slice().ok_or_else(|| ApiError::internal("image not contiguous"))?;
            let array = WireArray::from_f32(shape.to_vec(), values)
                .map_err(|e| ApiError::internal(format!("encoding the image: {e}")))?;
            voxtell_wire::encode(&array)
                .map_err(|e| ApiError::internal(format!("encoding the image: {e}")))?
        } else {
            Vec::new()
        };
        let source = up.source.clone();
        let id = work.add_image(StoredImage::new(up.ras, up.source, up.series))?;
        work.log(|| format!("image {id}: {source}"));
        // The official server reports the header's float32 zooms as Python floats.
        let spacing: Vec<String> = spacing.iter().map(|&s| pyjson::float(f64::from(s as f32))).collect();
        let meta = format!(
            "{{\"image_id\": {}, \"spacing\": [{}], \"shape\": [{}]}}",
            pyjson::string(&id),
            spacing.join(", "),
            shape.map(|d| d.to_string()).join(", ")
        );
        Ok((id, meta, payload))
    })
    .await?;
    let meta = HeaderValue::from_str(&meta).map_err(|e| ApiError::internal(format!("X-Meta header: {e}")))?;
    shared.log(|| format!("image {id}: answered ({} bytes of image)", payload.len()));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (HeaderName::from_static("x-meta"), meta),
        ],
        payload,
    )
        .into_response())
}

/// Python's truthiness of a JSON value (the official server reads `keep_largest` with
/// `bool(...)`).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// `POST /jobs` with `{"image_id", "prompts": [..] or "..", "keep_largest": bool}`.
async fn start_job(State(shared): State<AppState>, raw: Body) -> Result<axum::Json<Value>, ApiError> {
    let raw = read_body(raw, JOB_BODY_LIMIT, "a job is a small JSON object").await?;
    let payload: Value = serde_json::from_slice(&raw)
        .map_err(|e| ApiError::unprocessable(format!("The body is not JSON: {e}")))?;
    let Value::Object(payload) = payload else {
        return Err(ApiError::unprocessable("The body must be a JSON object {\"image_id\", \"prompts\"}."));
    };
    let image_id = payload.get("image_id").and_then(Value::as_str).unwrap_or_default();
    if shared.image(image_id, false).is_none() {
        return Err(ApiError::not_found("Unknown image_id (upload it first)."));
    }
    let prompts = match payload.get("prompts") {
        Some(v) if !truthy(v) => return Err(ApiError::bad("No prompts given.")),
        None => return Err(ApiError::bad("No prompts given.")),
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ApiError::bad("prompts must be a list of non-empty strings.")),
    };
    let prompts: Vec<String> = prompts
        .iter()
        .map(|p| p.as_str().filter(|s| !s.trim().is_empty()).map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad("prompts must be a list of non-empty strings."))?;
    let unknown = shared.unknown_prompts(&prompts);
    if !unknown.is_empty() {
        return Err(ApiError::bad(format!(
            "Unknown prompt(s) {unknown:?}: not in the embedding bank, and the server has no text model to embed them (voxtell serve --text-model). /capabilities lists the bank's prompts."
        )));
    }
    let keep_largest = payload.get("keep_largest").is_some_and(truthy);
    let (job_id, position) = shared.add_job(image_id, prompts, keep_largest)?;
    shared.log(|| format!("job {job_id} on image {image_id}: queued at position {position}"));
    Ok(axum::Json(json!({ "job_id": job_id })))
}

/// The id in a route's path; one that cannot be read (e.g. not UTF-8) names nothing.
fn path_id(id: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    id.map(|Path(id)| id).map_err(|_| ApiError::not_found("Not Found"))
}

fn unknown_job() -> ApiError {
    ApiError::not_found("Unknown job_id.")
}

async fn job_events(
    State(shared): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let job = shared.job(&id).ok_or_else(unknown_job)?;
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], events::stream(job)).into_response())
}

async fn job_result(
    State(shared): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let job = shared.job(&id).ok_or_else(unknown_job)?;
    let payload = result_payload(&shared, &job)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], Bytes::from_owner(ArcBytes(payload)))
        .into_response())
}

/// A job's cached result (marking it and its image as used), or the answer of
/// `GET /jobs/{id}/result` when there is none: 409 not finished, 500 the job's error, 410
/// evicted.
fn result_payload(shared: &Shared, job: &JobShared) -> Result<Arc<Vec<u8>>, ApiError> {
    match shared.result(job) {
        ResultState::Ready(payload) => Ok(payload),
        ResultState::NotFinished(s) => {
            Err(ApiError::new(StatusCode::CONFLICT, format!("Job not finished (status={}).", s.name())))
        }
        ResultState::Failed(e) => Err(ApiError::internal(e)),
        ResultState::Evicted => Err(ApiError::new(
            StatusCode::GONE,
            "The result of this job was evicted from the server's cache (--cache-memory); run the job again.",
        )),
    }
}

/// `GET /jobs/{id}/seg.dcm`: the job's masks as one DICOM SEG over the DICOM series its image
/// was uploaded as (a zip): one segment per prompt whose mask is not empty, in prompt order.
/// Beyond the answers of `GET /jobs/{id}/result`: 409 when the image was not a DICOM series (told
/// first, while the image is cached), when the series lacks what a SEG refers to, or when every
/// mask is empty; 410 when the image (which holds the series) was evicted.
async fn job_seg(
    State(shared): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    let job = shared.job(&id).ok_or_else(unknown_job)?;
    let not_dicom = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "This job's image was not uploaded as a DICOM series: a DICOM SEG refers to the slices of its source series, so it needs a scan uploaded as a zip of one DICOM series (POST /images).",
        )
    };
    let image = shared.image(&job.image_id, false);
    if image.as_ref().is_some_and(|i| i.series.is_none()) {
        return Err(not_dicom());
    }
    let payload = result_payload(&shared, &job)?;
    let image = image.ok_or_else(|| {
        ApiError::new(
            StatusCode::GONE,
            "The image of this job, which holds its DICOM series, was evicted from the server's cache (--cache-memory or --idle-timeout); upload the series again and run the job again.",
        )
    })?;
    let series = image.series.clone().ok_or_else(not_dicom)?;
    voxtell_io::dicom_seg::check_source(&series).map_err(|reason| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("The uploaded DICOM series cannot be the source of a DICOM SEG: {reason}."),
        )
    })?;
    // One SEG at a time; the permit goes with the work, so it is held until the work ends even
    // when the client leaves.
    let permit = Arc::clone(&shared.seg_builds)
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal(format!("The DICOM SEG queue is closed: {e}")))?;
    let work = Arc::clone(&shared);
    let built = blocking(move || {
        let _permit = permit;
        seg::build(&payload, &job.prompts, &image, &series, work.scratch.path())
    })
    .await?;
    shared.log(|| {
        format!(
            "job {id}: DICOM SEG of {} segment(s), {} frame(s), {} bytes",
            built.segments,
            built.frames,
            built.bytes.len()
        )
    });
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"voxtell_{id}_seg.dcm\""))
        .map_err(|e| ApiError::internal(format!("Content-Disposition header: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/dicom")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        built.bytes,
    )
        .into_response())
}

/// A shared result payload as a response body, without copying it.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

async fn cancel_job(
    State(shared): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let id = path_id(id)?;
    let job = shared.job(&id).ok_or_else(unknown_job)?;
    shared.cancel(&job);
    shared.log(|| format!("job {id}: cancel requested"));
    Ok(axum::Json(json!({ "cancelling": true })))
}

/// `POST /images/{id}/export`: a label map `(Z, Y, X)` in the reoriented space (VXA2, any
/// unsigned integer or bool dtype) back in the scan's own orientation, as `.nii.gz` bytes
/// written as nnU-Net's `write_seg` writes them.
async fn export(
    State(shared): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Result<Response, ApiError> {
    // The body first: an answer sent before it is read resets a client still sending.
    let raw = read_body(raw, shared.config.max_upload, "--max-upload").await;
    let id = path_id(id)?;
    let image = shared.image(&id, true).ok_or_else(|| ApiError::not_found("Unknown image_id."))?;
    let raw = raw?;
    let work = Arc::clone(&shared);
    let bytes = blocking(move || {
        let voxels: u64 = image.shape.iter().map(|&d| d as u64).product();
        let array = voxtell_wire::decode(&raw, voxels.saturating_mul(8))
            .map_err(|e| ApiError::bad(format!("Cannot read the label map: {e}")))?;
        if array.shape() != image.shape {
            return Err(ApiError::bad(format!(
                "The label map has shape {:?} but the image is {:?} (Z, Y, X).",
                array.shape(),
                image.shape
            )));
        }
        let labels =
            array.to_labels().map_err(|e| ApiError::bad(format!("Cannot read the label map: {e}")))?;
        if let Some(&big) = labels.iter().find(|&&v| v > u32::from(u16::MAX)) {
            return Err(ApiError::bad(format!(
                "Label {big} does not fit a NIfTI label map (at most 65535)."
            )));
        }
        let labels =
            ndarray::Array3::from_shape_vec(image.shape, labels.into_iter().map(|v| v as u16).collect())
                .map_err(|e| ApiError::internal(e.to_string()))?;
        let dir = tempfile::Builder::new()
            .prefix("export-")
            .tempdir_in(work.scratch.path())
            .map_err(|e| ApiError::internal(format!("Cannot make a folder for the export: {e}")))?;
        let path = dir.path().join("labels.nii.gz");
        voxtell_io::write_seg(&path, labels.view(), &image.geometry, voxtell_io::WriteOptions::default())
            .map_err(|e| ApiError::internal(format!("Cannot write the label map: {e}")))?;
        std::fs::read(&path).map_err(|e| ApiError::internal(format!("Cannot read the export back: {e}")))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Run CPU-bound work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the request's work crashed: {e}")))?
}
