//! `GET /jobs/{id}/events`: a job's progress as NDJSON, one JSON object per line, ending with
//! the terminal `{"status": …}` line.
//!
//! Unlike the official server, whose streams share one queue (two streams split the events
//! between them), every stream sees every line from the moment it opens: a stream opened late
//! first gets the job's notices and its latest progress (or queue position), then the lines as
//! they come; a stream opened after the job ended gets only the terminal line, as the official
//! server answers a reconnect.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures_util::stream;

use crate::state::{JobShared, LineKind};

/// The streaming body for `job`.
pub(crate) fn stream(job: Arc<JobShared>) -> Body {
    // A new receiver has the current version marked as seen.
    let changed = job.changed.subscribe();
    let (first, cursor, done) = {
        let p = job.lock();
        if let Some(last) = p.lines.last().filter(|l| l.kind == LineKind::Terminal) {
            (last.text.clone(), p.lines.len(), true)
        } else {
            let mut first: String =
                p.lines.iter().filter(|l| l.kind == LineKind::Notice).map(|l| l.text.as_str()).collect();
            if let Some(state) =
                p.lines.iter().rev().find(|l| matches!(l.kind, LineKind::Progress | LineKind::Queued))
            {
                first.push_str(&state.text);
            }
            (first, p.lines.len(), false)
        }
    };
    struct State {
        job: Arc<JobShared>,
        changed: tokio::sync::watch::Receiver<u64>,
        cursor: usize,
        pending: Option<String>,
        done: bool,
    }
    let state = State { job, changed, cursor, pending: Some(first).filter(|f| !f.is_empty()), done };
    let body = stream::unfold(state, |mut s| async move {
        loop {
            if let Some(text) = s.pending.take() {
                return Some((Ok::<Bytes, Infallible>(Bytes::from(text)), s));
            }
            if s.done {
                return None;
            }
            {
                let p = s.job.lock();
                if s.cursor < p.lines.len() {
                    let new = &p.lines[s.cursor..];
                    s.done = new.iter().any(|l| l.kind == LineKind::Terminal);
                    s.pending = Some(new.iter().map(|l| l.text.as_str()).collect());
                    s.cursor = p.lines.len();
                    continue;
                }
            }
            // The sender lives in the job; it is never dropped while the job is referenced.
            if s.changed.changed().await.is_err() {
                return None;
            }
        }
    });
    Body::from_stream(body)
}
