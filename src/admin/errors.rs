//! The one error shape of the admin HTTP surface (the admin API, the dead-letter and ledger
//! routes, and axum's own rejections):
//!
//! ```json
//! {"error": {"code": "unknown_company", "message": "unknown company \"acme\"", "message_ja": "会社が見つかりません"}}
//! ```
//!
//! `code` is stable (screens branch on it), `message` says in English what happened and what to
//! do, `message_ja` the same in Japanese (the code's sentence in [`messages`], or a sentence of
//! the error's own). Extractor rejections (bad JSON, a wrong content type), unknown routes,
//! methods a route does not take and the per-request timeout all answer in this shape too:
//! [`json_errors`] rewrites any error answer that is not already JSON.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::messages;
use super::service::AdminError;

/// An error answer: status, stable code, English and Japanese sentences.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Overrides the code's Japanese sentence (when the answer carries a figure, say).
    pub message_ja: Option<String>,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            message_ja: None,
            retry_after: None,
        }
    }

    pub fn with_ja(mut self, ja: impl Into<String>) -> Self {
        self.message_ja = Some(ja.into());
        self
    }

    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let ja = self
            .message_ja
            .clone()
            .unwrap_or_else(|| messages::reason(self.code).ja.to_string());
        serde_json::json!({"error": {"code": self.code, "message": self.message, "message_ja": ja}})
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut out = ApiError::new(status, e.code(), e.to_string());
        if let AdminError::Unavailable {
            retry_after: Some(d),
            ..
        } = &e
        {
            out.retry_after = Some(*d);
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, error = %self.message, "admin: request failed");
        }
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(d) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&d.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The code for an error answer that carries no code of its own (axum's rejections, the
/// fallbacks, the timeout), by status.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "unknown_route",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "request_timeout",
        StatusCode::UNAUTHORIZED => "unauthorized",
        s if s.is_client_error() => "invalid_request",
        _ => "internal",
    }
}

/// What a bare status means, in English, when axum gave no text.
fn default_message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "there is no such route: see schemas/admin-api.openapi.yaml",
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take this method (see Allow)",
        StatusCode::REQUEST_TIMEOUT => {
            "the request did not finish within admin.request_timeout_seconds; try again later"
        }
        _ => "the request failed",
    }
}

/// Largest error text of axum's that is kept.
const MAX_REJECTION_TEXT: usize = 4096;

/// Middleware: turns every error answer that is not JSON (axum's plain-text rejections, empty
/// 404/405 answers, the timeout's 408) into the error shape, keeping the status and the other
/// headers (`Allow`, `Retry-After`). HTML answers (the consent callback's pages) are left alone.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") || content_type.starts_with("text/html") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REJECTION_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        default_message(status).to_string()
    } else {
        text
    };
    let e = ApiError::new(status, code_for(status), message);
    let body = serde_json::to_vec(&e.body()).expect("serializable");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// The fallback for paths no route serves.
pub async fn unknown_route(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!(
            "there is no route {} {}: see schemas/admin-api.openapi.yaml",
            req.method(),
            req.uri().path()
        ),
    )
}
