//! Errors: what user code reports, and the JSON every error response carries.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error from user code (`setup`, `decode_request`, `predict`, `encode_response`),
/// typed so that it becomes the right HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is invalid (400); the message should name the bad field.
    #[error("{0}")]
    BadRequest(String),
    /// The model cannot handle this input (422).
    #[error("{0}")]
    Unprocessable(String),
    /// Something failed inside the model (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 error for `field`.
    pub fn field(field: &str, why: impl std::fmt::Display) -> Self {
        ApiError::BadRequest(format!("`{field}`: {why}"))
    }
}

/// An HTTP error with an OpenAI-style JSON body `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// Machine-readable kind, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// Seconds after which to retry (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

impl HttpError {
    /// An error with `status`, `kind` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        HttpError { status, message: message.into(), kind, retry_after: None }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    /// 503 with `Retry-After`.
    pub fn overloaded(message: impl Into<String>, retry_after: u64) -> Self {
        HttpError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded_error", message)
        }
    }
    /// 504.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout_error", message)
    }
    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "code": self.status.as_u16()}})
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::BadRequest(m) => HttpError::bad_request(m),
            ApiError::Unprocessable(m) => {
                HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", m)
            }
            ApiError::Internal(m) => HttpError::internal(m),
        }
    }
}

/// Response extension naming the error type, for the metrics layer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ErrorKind(pub &'static str);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.extensions_mut().insert(ErrorKind(self.kind));
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is left unread (see body.rs): this connection cannot
            // carry another request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration cannot work; the message names the field.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}
