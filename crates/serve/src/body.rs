//! Reading request bodies within `max_payload_bytes`, and refusing larger ones so that
//! every client reads the 413.
//!
//! Many clients (Python's `http.client`, anything that writes the whole body before
//! reading) are still writing when the 413 is ready. Closing the connection then, with
//! their bytes unread, makes the kernel reset it, and they see a broken pipe instead of
//! the answer. So the server answers at once (with `Connection: close`) and keeps reading
//! and discarding the rest of the body for a while, as nginx's lingering close does,
//! bounded in bytes and in time so that a refused body cannot hold a connection for ever.
use crate::error::HttpError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// Most bytes of a refused body read and discarded after the 413.
pub(crate) const LINGER_BYTES: usize = 64 << 20;
/// Longest time spent reading a refused body after the 413.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(30);
/// Longest wait for the next piece of a refused body.
pub(crate) const LINGER_IDLE: Duration = Duration::from_secs(5);

/// The body's bytes, or 413 when it is larger than `limit`.
pub(crate) async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, HttpError> {
    let too_large = || {
        HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than max_payload_bytes = {limit}"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // A client that waits for `100 Continue` has sent nothing yet and will send
        // nothing: reading would ask it for the body (hyper sends 100 on the first read).
        if !expects_continue(headers) {
            tokio::spawn(linger(body));
        }
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::bad_request(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > limit {
            tokio::spawn(linger(body));
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(Bytes::from(bytes))
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards what is left of a refused body, within the linger bounds.
async fn linger(mut body: Body) {
    let give_up = Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    loop {
        let wait = (Instant::now() + LINGER_IDLE).min(give_up);
        let Ok(Some(Ok(frame))) = tokio::time::timeout_at(wait, body.frame()).await else { return };
        let n = frame.data_ref().map_or(0, Bytes::len);
        if n >= left {
            return;
        }
        left -= n;
    }
}

/// Parses JSON, with serde's message (line, column, what was expected) on failure.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, HttpError> {
    serde_json::from_slice(bytes).map_err(|e| HttpError::bad_request(format!("malformed JSON body: {e}")))
}
