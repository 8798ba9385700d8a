//! The server: endpoints, built-in routes, layers, and graceful shutdown.
//!
//! A request's path, top to bottom ([`predict_route`]): the auth and metrics layers →
//! read the body (413 past `max_payload_bytes`) → parse JSON (400) → `decode_request`
//! (400 naming the field) → the endpoint's bounded queue (503 with Retry-After when full)
//! → a worker batches it with others and runs `predict` on its own thread → the reply
//! comes back → `encode_response` → JSON, or an SSE / NDJSON stream of chunks. The
//! whole path runs under the request's deadline (504).
use crate::api::InferenceApi;
use crate::auth::{self, ApiKeys};
use crate::body;
use crate::config::{EndpointConfig, ServerConfig};
use crate::error::{panic_message, ApiError, HttpError, ServeError};
use crate::metrics::{Metrics, RouteMetrics};
use crate::metrics_layer::{RecordMetrics, Recorder};
use crate::openai::ModelList;
use crate::stream::{self, chunks_until, stream_response, Deadlines, Framing};
use crate::worker::{self, Job, Queue, Rejected, Reply};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Routes the server answers itself (`/v1/models` lists the models of its OpenAI
/// endpoints, none when it has none).
pub const BUILTIN_ROUTES: [&str; 5] = ["/health", "/info", "/metrics", "/v1/models", "/v1/models/{*id}"];

/// What every request handler of the server shares.
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
}

/// One endpoint: its API, its queue, its options.
pub struct Endpoint<A: InferenceApi> {
    pub(crate) api: Arc<A>,
    pub(crate) queue: Queue<A::Input, A::Output>,
    pub(crate) config: EndpointConfig,
    pub(crate) shared: Arc<Shared>,
    /// How many of its workers serve (readiness).
    pub(crate) serving: Arc<AtomicUsize>,
}

impl<A: InferenceApi> Endpoint<A> {
    /// The deadline of a request that starts now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.shared.config.timeout
    }

    /// Runs user code that must not take the server down with a panic.
    pub(crate) fn guard<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, ApiError>,
    ) -> Result<T, HttpError> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into()),
            Err(p) => Err(HttpError::internal(format!("{what} panicked: {}", panic_message(&*p)))),
        }
    }

    pub(crate) fn decode(&self, body: &Value) -> Result<A::Input, HttpError> {
        self.guard("decode_request", || self.api.decode_request(body))
    }

    pub(crate) fn encode(&self, output: A::Output) -> Result<Value, HttpError> {
        self.guard("encode_response", || self.api.encode_response(output))
    }

    /// Queues the jobs of one request (see [`Queue::submit`]).
    fn enqueue(&self, jobs: Vec<Job<A::Input, A::Output>>) -> Result<(), HttpError> {
        match self.queue.submit(jobs) {
            Ok(()) => Ok(()),
            Err(Rejected::Full) => Err(HttpError::overloaded(
                format!(
                    "{} is at capacity ({} queued); retry shortly",
                    self.config.path, self.config.max_queue
                ),
                1,
            )),
            Err(Rejected::Closed) => Err(HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "the server is shutting down",
            )),
        }
    }

    /// The deadlines of a stream queued now, by a request that started with `deadline`:
    /// the endpoint's first-chunk and idle limits when it has them, else the request's.
    pub(crate) fn stream_deadlines(&self, deadline: Instant) -> Deadlines {
        match self.config.first_chunk_timeout {
            Some(first) => Deadlines { first: Instant::now() + first, idle: self.config.idle_timeout },
            None => Deadlines { first: deadline, idle: None },
        }
    }

    /// The result of `work`, or a 504 error when `deadline` passes first.
    pub(crate) async fn by<T>(
        &self,
        deadline: Instant,
        work: impl Future<Output = Result<T, HttpError>>,
    ) -> Result<T, HttpError> {
        tokio::time::timeout_at(deadline.into(), work).await.unwrap_or_else(|_| {
            Err(HttpError::timeout(format!(
                "no answer within the request timeout of {} ms",
                self.shared.config.timeout.as_millis()
            )))
        })
    }

    /// The response of `work`, or 504 when `deadline` passes first.
    pub(crate) async fn answer_by(
        &self,
        deadline: Instant,
        work: impl Future<Output = Result<Response, HttpError>>,
    ) -> Response {
        self.by(deadline, work).await.unwrap_or_else(IntoResponse::into_response)
    }

    /// Queues one input and waits for its output.
    pub(crate) async fn call(&self, input: A::Input, deadline: Instant) -> Result<A::Output, HttpError> {
        let mut outputs = self.call_all(vec![input], deadline).await?;
        outputs.pop().ok_or_else(|| HttpError::internal("the worker dropped the request"))
    }

    /// Queues the inputs of one request together (each its own job, so that workers
    /// batch them with others) and waits for their outputs, in order.
    pub(crate) async fn call_all(
        &self,
        inputs: Vec<A::Input>,
        deadline: Instant,
    ) -> Result<Vec<A::Output>, HttpError> {
        let (jobs, replies): (Vec<_>, Vec<_>) = inputs
            .into_iter()
            .map(|input| {
                let (tx, rx) = oneshot::channel();
                (Job { input, reply: Reply::Once(tx), deadline }, rx)
            })
            .unzip();
        self.enqueue(jobs)?;
        let outputs = futures_util::future::try_join_all(replies.into_iter().map(|rx| async move {
            match rx.await {
                Ok(result) => result.map_err(HttpError::from),
                Err(_) => Err(HttpError::internal("the worker dropped the request")),
            }
        }));
        outputs.await
    }

    /// Queues one input for streaming; chunks arrive on the returned receiver.
    pub(crate) fn call_stream(
        &self,
        input: A::Input,
        deadline: Instant,
    ) -> Result<mpsc::UnboundedReceiver<Result<A::Output, ApiError>>, HttpError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.enqueue(vec![Job { input, reply: Reply::Stream(tx), deadline }])?;
        Ok(rx)
    }

    /// Reads and parses a JSON body within the payload limit.
    pub(crate) async fn read_json(&self, headers: &HeaderMap, body: Body) -> Result<Value, HttpError> {
        let bytes = body::read_body(headers, body, self.shared.config.max_payload_bytes).await?;
        body::parse_json(&bytes)
    }
}

/// The handler of a plain or streaming endpoint.
async fn predict_route<A: InferenceApi>(ep: Arc<Endpoint<A>>, headers: HeaderMap, body: Body) -> Response {
    let deadline = ep.deadline();
    let work = async {
        let value = ep.read_json(&headers, body).await?;
        let input = ep.decode(&value)?;
        if ep.config.stream {
            let deadlines = ep.stream_deadlines(deadline);
            let rx = ep.call_stream(input, deadlines.first)?;
            let values = stream::encoded(Arc::clone(&ep), chunks_until(rx, deadlines));
            return Ok::<Response, HttpError>(stream_response(Framing::from_headers(&headers), values));
        }
        let output = ep.call(input, deadline).await?;
        Ok(Json(ep.encode(output)?).into_response())
    };
    ep.answer_by(deadline, work).await
}

/// Builds an inference server: add endpoints, then `bind` or `serve`.
pub struct Server {
    shared: Arc<Shared>,
    /// Per endpoint, how many of its workers serve (`/health` needs one in each).
    serving: Vec<Arc<AtomicUsize>>,
    /// Set once the server stops: workers retrying a failed setup give up.
    stopping: Arc<AtomicBool>,
    endpoints: Router,
    paths: Vec<String>,
    info: Vec<Value>,
    workers: Vec<std::thread::JoinHandle<()>>,
    route_metrics: HashMap<String, RouteMetrics>,
    openai_models: ModelList,
}

impl Server {
    /// A server with `config` and no endpoints yet.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            shared: Arc::new(Shared { config, metrics: Arc::new(Metrics::new()) }),
            serving: Vec::new(),
            stopping: Arc::new(AtomicBool::new(false)),
            endpoints: Router::new(),
            paths: Vec::new(),
            info: Vec::new(),
            workers: Vec::new(),
            route_metrics: HashMap::new(),
            openai_models: ModelList::default(),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Adds an endpoint serving `api` at `config.path` (its workers start now).
    pub fn endpoint<A: InferenceApi>(self, config: EndpointConfig, api: A) -> Result<Self, ServeError> {
        self.add(config, api, |ep| {
            post(move |headers: HeaderMap, body: Body| predict_route(ep, headers, body))
        })
    }

    /// Adds an endpoint whose route handler is built by `route` (the OpenAI specs use this).
    pub(crate) fn add<A: InferenceApi>(
        self,
        config: EndpointConfig,
        api: A,
        route: impl FnOnce(Arc<Endpoint<A>>) -> MethodRouter,
    ) -> Result<Self, ServeError> {
        let path = config.path.clone();
        self.add_routes(config, api, &[], move |ep| Router::new().route(&path, route(ep)))
    }

    /// Adds an endpoint answering at `config.path` and at the `extra` routes, all built by
    /// `routes` (the tensor API's Open Inference Protocol routes use this).
    pub(crate) fn add_routes<A: InferenceApi>(
        mut self,
        config: EndpointConfig,
        api: A,
        extra: &[&str],
        routes: impl FnOnce(Arc<Endpoint<A>>) -> Router,
    ) -> Result<Self, ServeError> {
        config.validate()?;
        if BUILTIN_ROUTES.contains(&config.path.as_str()) || config.path.starts_with("/v1/models/") {
            return Err(ServeError::Config(format!(
                "endpoint path {} collides with a built-in route",
                config.path
            )));
        }
        for path in std::iter::once(config.path.as_str()).chain(extra.iter().copied()) {
            if self.paths.iter().any(|p| p == path) {
                return Err(ServeError::Config(format!("two endpoints share the path {path}")));
            }
        }
        let api = Arc::new(api);
        let route_metrics = self.shared.metrics.for_route(&config.path);
        self.route_metrics.insert(config.path.clone(), route_metrics.clone());
        for path in extra {
            self.route_metrics.insert((*path).to_owned(), self.shared.metrics.for_route(path));
        }
        let serving = Arc::new(AtomicUsize::new(0));
        let (queue, handles) = worker::start(
            Arc::clone(&api),
            &config,
            route_metrics,
            Arc::clone(&serving),
            Arc::clone(&self.stopping),
        )?;
        self.serving.push(Arc::clone(&serving));
        self.workers.extend(handles);
        self.info.push(json!({"path": config.path, "config": config, "model": api.info()}));
        self.paths.push(config.path.clone());
        self.paths.extend(extra.iter().map(|p| (*p).to_owned()));
        let ep = Arc::new(Endpoint { api, queue, config, shared: Arc::clone(&self.shared), serving });
        self.endpoints = std::mem::take(&mut self.endpoints).merge(routes(ep));
        Ok(self)
    }

    /// Lists `id` at `/v1/models` (the OpenAI specs call this for their endpoints).
    pub(crate) fn with_openai_model(mut self, id: String) -> Self {
        self.openai_models.add(id);
        self
    }

    fn router(&mut self) -> Router {
        let keys = ApiKeys::from_config_and_env(&self.shared.config.api_keys);
        let info = json!({
            "volt_version": env!("CARGO_PKG_VERSION"),
            "server": self.shared.config,
            "authentication": {"enabled": keys.enabled(), "protected_routes": "every route but /health",
                               "headers": ["Authorization: Bearer <key>", "X-API-Key: <key>"]},
            "endpoints": self.info,
        });
        let metrics = Arc::clone(&self.shared.metrics);
        let serving = self.serving.clone();
        let mut protected = std::mem::take(&mut self.endpoints)
            .merge(std::mem::take(&mut self.openai_models).routes())
            .route("/info", get(move || async move { Json(info.clone()) }))
            .route(
                "/metrics",
                get(move || async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.encode())
                }),
            );
        // Without keys the layer would only pass requests through: leave it out.
        if keys.enabled() {
            protected = protected.route_layer(axum::middleware::from_fn_with_state(keys, auth::require_key));
        }
        let health = Router::new().route(
            "/health",
            get(move || async move {
                if serving.iter().all(|n| n.load(Ordering::SeqCst) > 0) {
                    (StatusCode::OK, Json(json!({"status": "ok"})))
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "starting"})))
                }
            }),
        );
        let mut routes: HashMap<String, Arc<RouteMetrics>> =
            std::mem::take(&mut self.route_metrics).into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        for route in BUILTIN_ROUTES.iter().chain(["unmatched"].iter()) {
            routes.insert((*route).to_owned(), Arc::new(self.shared.metrics.for_route(route)));
        }
        let recorder = Arc::new(Recorder { metrics: Arc::clone(&self.shared.metrics), routes });
        protected
            .merge(health)
            .fallback(|| async { HttpError::new(StatusCode::NOT_FOUND, "not_found_error", "no such route") })
            .method_not_allowed_fallback(|| async {
                HttpError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "invalid_request_error",
                    "method not allowed on this route",
                )
            })
            .layer(RecordMetrics(recorder))
    }

    /// Binds the listener and serves in the background until [`RunningServer::shutdown`].
    pub async fn bind(mut self) -> Result<RunningServer, ServeError> {
        let listener = self.listener().await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            self.serve_on(listener, async {
                let _ = rx.await;
            })
            .await
        });
        Ok(RunningServer { addr, shutdown: Some(tx), task })
    }

    async fn listener(&self) -> Result<tokio::net::TcpListener, ServeError> {
        let c = &self.shared.config;
        tokio::net::TcpListener::bind((c.host.as_str(), c.port)).await.map_err(|e| {
            ServeError::Io(std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", c.host, c.port),
            ))
        })
    }

    async fn serve_on(
        &mut self,
        listener: tokio::net::TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let router = self.router();
        let grace = self.shared.config.shutdown_grace;
        let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
        let signal = async move {
            signal.await;
            let _ = stopped_tx.send(());
        };
        let mut server = Box::pin(axum::serve(listener, router).with_graceful_shutdown(signal).into_future());
        // Until the signal, serve; after it, give in-flight requests `grace` to finish.
        let result = tokio::select! {
            r = &mut server => r,
            _ = async {
                let _ = stopped_rx.await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("shutdown grace period of {grace:?} passed; dropping remaining requests");
                Ok(())
            }
        };
        // Dropping the router (inside `server`) closes the queues; workers finish and exit.
        drop(server);
        self.stopping.store(true, Ordering::SeqCst);
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        result.map_err(ServeError::Io)
    }
}

/// A server serving in the background.
pub struct RunningServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Serves until SIGTERM or SIGINT, then shuts down gracefully: stops accepting, lets
    /// in-flight requests finish within `shutdown_grace`, stops the workers.
    pub async fn until_signal(self) -> Result<(), ServeError> {
        shutdown_signal().await;
        self.shutdown().await
    }

    /// Stops gracefully and waits until the workers have exited.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Io(std::io::Error::other(e.to_string()))),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
