//! The metrics layer: every response counted by route and status, timed, and its error
//! type counted. A streamed response is counted and timed when its body ends, or is
//! dropped because the client left, not when its headers go.
use crate::error::ErrorKind;
use crate::metrics::{ErrorLabels, Metrics, RouteMetrics};
use crate::stream::StreamReport;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use futures_util::Stream;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Each route's metric handles, for the metrics layer.
pub(crate) struct Recorder {
    pub metrics: Arc<Metrics>,
    pub routes: HashMap<String, Arc<RouteMetrics>>,
}

impl Recorder {
    fn record(&self, route: &RouteMetrics, status: u16, kind: Option<&str>, start: Instant) {
        route.status(&self.metrics, status).inc();
        route.latency.observe(start.elapsed().as_secs_f64());
        if let Some(kind) = kind {
            let labels = ErrorLabels { route: route.name().to_owned(), kind: kind.to_owned() };
            self.metrics.errors.get_or_create(&labels).inc();
        }
    }
}

/// A tower layer that records each response in the metrics. Hand-written rather than
/// `middleware::from_fn`, which boxes a future per request: this sits on every
/// request's path.
#[derive(Clone)]
pub(crate) struct RecordMetrics(pub Arc<Recorder>);

impl<S> tower::Layer<S> for RecordMetrics {
    type Service = RecordMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordMetricsService { inner, recorder: Arc::clone(&self.0) }
    }
}

#[derive(Clone)]
pub(crate) struct RecordMetricsService<S> {
    inner: S,
    recorder: Arc<Recorder>,
}

impl<S> tower::Service<Request> for RecordMetricsService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RecordMetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let routes = &self.recorder.routes;
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|p| routes.get(p.as_str()))
            .or_else(|| routes.get("unmatched"))
            .cloned();
        RecordMetricsFuture {
            inner: self.inner.call(request),
            route,
            recorder: Arc::clone(&self.recorder),
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub(crate) struct RecordMetricsFuture<F> {
        #[pin]
        inner: F,
        route: Option<Arc<RouteMetrics>>,
        recorder: Arc<Recorder>,
        start: Instant,
    }
}

impl<F, E> Future for RecordMetricsFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(route)) = (&mut result, this.route.take()) {
            let status = response.status().as_u16();
            match response.extensions_mut().remove::<StreamReport>() {
                Some(report) => {
                    let recorder = Arc::clone(this.recorder);
                    let end = StreamEnd { route, recorder, start: *this.start, report, status, ended: false };
                    let body = std::mem::take(response.body_mut()).into_data_stream();
                    *response.body_mut() = Body::from_stream(Metered { inner: body, end: Some(end) });
                }
                None => {
                    let kind = response.extensions().get::<ErrorKind>().map(|k| k.0);
                    this.recorder.record(&route, status, kind, *this.start);
                }
            }
        }
        Poll::Ready(result)
    }
}

/// Records a streamed response when it is dropped: at the end of its body, or earlier
/// when the client leaves (hyper then drops the body).
struct StreamEnd {
    route: Arc<RouteMetrics>,
    recorder: Arc<Recorder>,
    start: Instant,
    report: StreamReport,
    status: u16,
    ended: bool,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let (status, kind) = match self.report.error() {
            Some((status, kind)) => (status.as_u16(), Some(kind)),
            None => (self.status, None),
        };
        self.recorder.record(&self.route, status, kind, self.start);
        // Last, so that a reader who sees the disconnect also sees the stream recorded.
        if !self.ended {
            self.route.stream_disconnects.inc();
        }
    }
}

pin_project_lite::pin_project! {
    /// A streamed body that records itself when it ends or is dropped.
    struct Metered<S> {
        #[pin]
        inner: S,
        end: Option<StreamEnd>,
    }
}

impl<S: Stream> Stream for Metered<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let item = std::task::ready!(this.inner.poll_next(cx));
        if item.is_none() {
            if let Some(mut end) = this.end.take() {
                end.ended = true;
            }
        }
        Poll::Ready(item)
    }
}
