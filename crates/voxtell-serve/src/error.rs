//! The errors of the server: [`ServeError`] for starting and stopping it, and the HTTP answers
//! to a bad request ([`ApiError`]: a status and a `{"detail": …}` body, as the official server
//! gives them).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a server could not start or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be used.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A thread or the async runtime could not be started.
    #[error("cannot start the server's threads: {0}")]
    Runtime(#[source] std::io::Error),
    /// The private scratch folder (exports, DICOM uploads) could not be made.
    #[error("cannot create the server's scratch folder: {0}")]
    Scratch(#[source] std::io::Error),
    /// The HTTP server stopped with an error.
    #[error("the HTTP server failed: {0}")]
    Http(#[source] std::io::Error),
    /// A thread of the server panicked (a bug).
    #[error("the server's {0} thread crashed")]
    Crashed(&'static str),
}

/// An HTTP error answer: a status and the `detail` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) detail: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into() }
    }

    /// 400.
    pub(crate) fn bad(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }

    /// 404.
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, detail)
    }

    /// 413.
    pub(crate) fn too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, detail)
    }

    /// 422 (FastAPI's answer to a body or query it cannot parse).
    pub(crate) fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    /// 500 (a failed job's result, or a bug).
    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "detail": self.detail }))).into_response()
    }
}
