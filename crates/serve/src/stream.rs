//! Streamed responses: SSE or NDJSON framing, the chunks of a stream up to its
//! deadline, and the report a stream leaves for the metrics layer.
use crate::api::InferenceApi;
use crate::error::{ApiError, HttpError};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Which framing a streaming client asked for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Sse,
    NdJson,
}

impl Framing {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accept.contains("application/x-ndjson") || accept.contains("application/jsonl") {
            Framing::NdJson
        } else {
            Framing::Sse
        }
    }
}

/// A streamed response's extension: its 200 went out before its chunks, so the
/// metrics layer counts it when the body ends, under the first error sent in the
/// stream, if any.
#[derive(Clone, Default)]
pub(crate) struct StreamReport(Arc<OnceLock<(StatusCode, &'static str)>>);

impl StreamReport {
    fn fail(&self, e: &HttpError) {
        let _ = self.0.set((e.status, e.kind));
    }
    /// The status and type of the first error the stream sent.
    pub(crate) fn error(&self) -> Option<(StatusCode, &'static str)> {
        self.0.get().copied()
    }
}

/// A stream of JSON values as SSE events (ending with `data: [DONE]`) or NDJSON lines;
/// an error becomes an `{"error": ...}` value in the stream.
pub(crate) fn stream_response<S>(framing: Framing, values: S) -> Response
where
    S: Stream<Item = Result<Value, HttpError>> + Send + 'static,
{
    let report = StreamReport::default();
    let reported = report.clone();
    let values = values.map(move |item| match item {
        Ok(v) => v,
        Err(e) => {
            reported.fail(&e);
            e.body()
        }
    });
    let mut response = match framing {
        Framing::Sse => {
            let events = values
                .map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string())))
                .chain(futures_util::stream::once(async { Ok(Event::default().data("[DONE]")) }));
            Sse::new(events).into_response()
        }
        Framing::NdJson => {
            let lines = values.map(|v| Ok::<_, Infallible>(Bytes::from(format!("{v}\n"))));
            let mut response = Response::new(Body::from_stream(lines));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
            response
        }
    };
    response.extensions_mut().insert(report);
    response
}

/// When a stream gives up waiting: `first` without any chunk, then `idle` after each
/// chunk (with no `idle`, `first` bounds the whole stream).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub first: Instant,
    pub idle: Option<Duration>,
}

/// Chunks of a stream until it ends, fails or misses a deadline; an error is the last
/// item.
pub(crate) fn chunks_until<O: Send + 'static>(
    rx: mpsc::UnboundedReceiver<Result<O, ApiError>>,
    deadlines: Deadlines,
) -> impl Stream<Item = Result<O, HttpError>> + Send + 'static {
    let timeout = Box::pin(tokio::time::sleep_until(deadlines.first.into()));
    futures_util::stream::unfold((rx, timeout, false), move |(mut rx, mut timeout, done)| async move {
        if done {
            return None;
        }
        tokio::select! {
            item = rx.recv() => match item {
                Some(Ok(o)) => {
                    if let Some(idle) = deadlines.idle {
                        timeout.as_mut().reset((Instant::now() + idle).into());
                    }
                    Some((Ok(o), (rx, timeout, false)))
                }
                Some(Err(e)) => Some((Err(HttpError::from(e)), (rx, timeout, true))),
                None => None,
            },
            _ = &mut timeout => {
                let why = match deadlines.idle {
                    Some(idle) => format!(
                        "the stream's deadline passed: no first chunk in time, or none for {} ms after the last",
                        idle.as_millis()
                    ),
                    None => "the request's deadline passed while streaming".to_owned(),
                };
                Some((Err(HttpError::timeout(why)), (rx, timeout, true)))
            }
        }
    })
}

/// The encoded chunks of an endpoint's stream.
pub(crate) fn encoded<A: InferenceApi>(
    ep: Arc<crate::server::Endpoint<A>>,
    chunks: impl Stream<Item = Result<A::Output, HttpError>> + Send + 'static,
) -> impl Stream<Item = Result<Value, HttpError>> + Send + 'static {
    chunks.map(move |chunk| chunk.and_then(|o| ep.encode(o)))
}
