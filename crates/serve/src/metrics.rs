//! `/metrics` in Prometheus text format, through the `prometheus-client` crate.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels: the route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// URL path.
    pub route: String,
}

/// Labels: route and HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// URL path.
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

/// Labels: route and error type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// URL path.
    pub route: String,
    /// The `type` of the error body.
    pub kind: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~54 s
    Histogram::new(exponential_buckets(1e-4, 2.0, 20))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status.
    pub requests: Family<StatusLabels, Counter>,
    /// Request latency by route, seconds.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Requests waiting in each endpoint's queue.
    pub queue_depth: Family<RouteLabels, Gauge>,
    /// Size of each batch handed to predict.
    pub batch_size: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Seconds workers spent in predict.
    pub worker_busy: Family<RouteLabels, Counter<f64, AtomicU64>>,
    /// Error responses by route and type.
    pub errors: Family<ErrorLabels, Counter>,
    /// Calls of the user's predict (or predict_stream) by route.
    pub predict_calls: Family<RouteLabels, Counter>,
    /// Streamed responses whose client left before the end, by route.
    pub stream_disconnects: Family<RouteLabels, Counter>,
    generation: GenerationFamilies,
}

/// The families of [`GenerationMetrics`], named as vLLM names them.
struct GenerationFamilies {
    time_to_first_token: Family<RouteLabels, Histogram, fn() -> Histogram>,
    inter_token_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    prompt_tokens: Family<RouteLabels, Counter>,
    generation_tokens: Family<RouteLabels, Counter>,
    running: Family<RouteLabels, Gauge>,
    waiting: Family<RouteLabels, Gauge>,
    kv_cache_usage: Family<RouteLabels, Gauge<f64, AtomicU64>>,
}

impl GenerationFamilies {
    fn register(registry: &mut Registry) -> Self {
        let f = GenerationFamilies {
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            inter_token_latency: Family::new_with_constructor(latency_histogram),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            running: Family::default(),
            waiting: Family::default(),
            kv_cache_usage: Family::default(),
        };
        registry.register(
            "time_to_first_token_seconds",
            "Generations: from the request's arrival to its first token",
            f.time_to_first_token.clone(),
        );
        registry.register(
            "inter_token_latency_seconds",
            "Generations: between two tokens sent",
            f.inter_token_latency.clone(),
        );
        registry.register("prompt_tokens", "Generations: prompt tokens read", f.prompt_tokens.clone());
        registry.register("generation_tokens", "Generations: tokens generated", f.generation_tokens.clone());
        registry.register("num_requests_running", "Generations running in the engine", f.running.clone());
        registry.register(
            "num_requests_waiting",
            "Generations waiting for a place in the engine",
            f.waiting.clone(),
        );
        registry.register(
            "kv_cache_usage_perc",
            "Share of the engine's KV cache capacity in use (0 to 1)",
            f.kv_cache_usage.clone(),
        );
        f
    }
}

/// One generative endpoint's metrics: the adapter records latencies and tokens, the
/// model's engine (through [`crate::openai::ChatApi::attach_metrics`]) its gauges.
#[derive(Clone, Debug)]
pub struct GenerationMetrics {
    /// Seconds from a request's arrival to its first token.
    pub time_to_first_token: Histogram,
    /// Seconds between two tokens sent.
    pub inter_token_latency: Histogram,
    /// Prompt tokens read.
    pub prompt_tokens: Counter,
    /// Tokens generated.
    pub generation_tokens: Counter,
    /// Requests generating now.
    pub running: Gauge,
    /// Requests waiting for a place in the engine.
    pub waiting: Gauge,
    /// Share of the KV cache's capacity in use, 0 to 1.
    pub kv_cache_usage: Gauge<f64, AtomicU64>,
    /// The route's `volt_queue_depth`: an engine adds its waiting requests, so that the
    /// one series autoscalers read counts every request not yet being served.
    pub queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `volt_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("volt");
        let requests = Family::<StatusLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let queue_depth = Family::<RouteLabels, Gauge>::default();
        let batch_size =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(batch_histogram);
        let worker_busy = Family::<RouteLabels, Counter<f64, AtomicU64>>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let predict_calls = Family::<RouteLabels, Counter>::default();
        let stream_disconnects = Family::<RouteLabels, Counter>::default();
        let generation = GenerationFamilies::register(&mut registry);
        registry.register("requests", "HTTP requests by route and status", requests.clone());
        registry.register("request_duration_seconds", "Request latency by route", latency.clone());
        registry.register("queue_depth", "Requests waiting for a worker", queue_depth.clone());
        registry.register("batch_size", "Requests per predict call", batch_size.clone());
        registry.register("worker_busy_seconds", "Time workers spent predicting", worker_busy.clone());
        registry.register("errors", "Error responses by route and type", errors.clone());
        registry.register("predict_calls", "Calls of predict by route", predict_calls.clone());
        registry.register(
            "stream_disconnects",
            "Streamed responses whose client left before the end",
            stream_disconnects.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            queue_depth,
            batch_size,
            worker_busy,
            errors,
            predict_calls,
            stream_disconnects,
            generation,
        }
    }

    /// The generation metrics of `route`.
    pub fn generation(&self, route: &str) -> GenerationMetrics {
        let labels = Self::route(route);
        let f = &self.generation;
        GenerationMetrics {
            time_to_first_token: f.time_to_first_token.get_or_create(&labels).clone(),
            inter_token_latency: f.inter_token_latency.get_or_create(&labels).clone(),
            prompt_tokens: f.prompt_tokens.get_or_create(&labels).clone(),
            generation_tokens: f.generation_tokens.get_or_create(&labels).clone(),
            running: f.running.get_or_create(&labels).clone(),
            waiting: f.waiting.get_or_create(&labels).clone(),
            kv_cache_usage: f.kv_cache_usage.get_or_create(&labels).clone(),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Labels for `route`.
    pub fn route(route: &str) -> RouteLabels {
        RouteLabels { route: route.to_owned() }
    }

    /// Handles of one route's metrics, resolved once so that the hot path does no lookups.
    pub fn for_route(&self, route: &str) -> RouteMetrics {
        let labels = Self::route(route);
        RouteMetrics {
            route: route.to_owned(),
            latency: self.latency.get_or_create(&labels).clone(),
            queue_depth: self.queue_depth.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
            worker_busy: self.worker_busy.get_or_create(&labels).clone(),
            predict_calls: self.predict_calls.get_or_create(&labels).clone(),
            stream_disconnects: self.stream_disconnects.get_or_create(&labels).clone(),
            statuses: Default::default(),
        }
    }
}

/// One route's metrics (clones share the underlying values).
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    route: String,
    /// Request latency, seconds.
    pub latency: Histogram,
    /// Requests waiting for a worker.
    pub queue_depth: Gauge,
    /// Requests per predict call.
    pub batch_size: Histogram,
    /// Seconds workers spent predicting.
    pub worker_busy: Counter<f64, AtomicU64>,
    /// Calls of predict.
    pub predict_calls: Counter,
    /// Streamed responses whose client left before the end.
    pub stream_disconnects: Counter,
    statuses: std::sync::Arc<std::sync::RwLock<Vec<(u16, Counter)>>>,
}

impl RouteMetrics {
    /// The route's path.
    pub fn name(&self) -> &str {
        &self.route
    }

    /// The request counter of `status` on this route.
    pub fn status(&self, metrics: &Metrics, status: u16) -> Counter {
        let known = self.statuses.read().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = known.iter().find(|(s, _)| *s == status) {
            return c.clone();
        }
        drop(known);
        let c = metrics.requests.get_or_create(&StatusLabels { route: self.route.clone(), status }).clone();
        self.statuses.write().unwrap_or_else(|p| p.into_inner()).push((status, c.clone()));
        c
    }
}
