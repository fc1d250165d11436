//! `application/problem+json` (RFC 9457) error responses. Each error has a stable `type`
//! URI under `https://postdog.dev/problems/`, a short `title`, the HTTP `status` and a
//! `detail` that tells the caller what to fix. Database and internal errors are logged
//! and answered with a generic 500 detail, never leaked.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API error rendered as a problem document.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    extensions: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// A new problem with a stable `kind` slug (the last segment of its `type` URI).
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: serde_json::Map::new(),
        }
    }

    /// Adds an extension member (RFC 9457 §3.2), e.g. the id of a conflicting record.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }

    /// A 500 whose cause is logged, not shown.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error answering a request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the server failed to answer; the error has been logged",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "type": format!("https://postdog.dev/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(object) = body.as_object_mut() {
            object.extend(self.extensions);
        }
        (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// The fallback for unknown routes.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no route for `{}`; see docs/ for the API", uri.path()),
    )
}

impl From<crate::storage::StorageError> for ApiError {
    /// A storage failure is the server's fault: logged, answered with a generic 500.
    fn from(error: crate::storage::StorageError) -> Self {
        Self::internal(&error)
    }
}

/// 404 `not-found`: "no {what} `{id}`".
pub(super) fn not_found_named(what: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        format!("no {what} `{id}`"),
    )
}

/// 422 `invalid-body`, saying what to fix.
pub(super) fn invalid_body(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-body",
        "Invalid request",
        detail,
    )
}
