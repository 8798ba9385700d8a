//! API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, compared in constant time.
use crate::error::HttpError;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

/// Environment variable holding API keys (comma-separated).
pub const API_KEY_ENV: &str = "VOLT_API_KEY";

/// The accepted keys; empty means authentication is off.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl ApiKeys {
    /// Keys from the configuration plus those in `VOLT_API_KEY`.
    pub fn from_config_and_env(configured: &[String]) -> Self {
        let env = std::env::var(API_KEY_ENV).unwrap_or_default();
        let keys = configured
            .iter()
            .map(String::as_str)
            .chain(env.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        ApiKeys(keys)
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `candidate` is one of the keys. Every key is compared, each in constant time.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, key| found | key.as_slice().ct_eq(candidate))
            .into()
    }
}

/// Rejects requests without a valid key with 401.
pub async fn require_key(State(keys): State<ApiKeys>, request: Request, next: Next) -> Response {
    if !keys.enabled() {
        return next.run(request).await;
    }
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    let ok = bearer.into_iter().chain(api_key).any(|k| keys.accepts(k.as_bytes()));
    if ok {
        next.run(request).await
    } else {
        let message = if bearer.is_none() && api_key.is_none() {
            "missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
        } else {
            "invalid API key"
        };
        let mut response =
            HttpError::new(StatusCode::UNAUTHORIZED, "authentication_error", message).into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        response
    }
}
