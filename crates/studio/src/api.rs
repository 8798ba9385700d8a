//! The control plane's HTTP API (JSON, bearer-token auth on everything but `/api/health`):
//!
//! | route | what |
//! |---|---|
//! | `GET /api/health` | `{"status": "ok"}` |
//! | `POST /api/jobs` | launch a checked spec (`LoadedJob`); `201 {"id": N}` |
//! | `GET /api/jobs` | every job, newest first |
//! | `GET /api/jobs/{id}` | a job with its nodes and events |
//! | `POST /api/jobs/{id}/cancel` | stop it (409 once it is over) |
//! | `GET /api/jobs/{id}/logs?attempt=K&node=N&offset=B` | a node's log from byte B; header `x-volt-log-size` |
use crate::controller::Controller;
use crate::jobs::JobDetail;
use crate::store::{Store, StoreError};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use volt_config::{BackendKind, LoadedJob};

/// What every handler shares.
pub struct App {
    /// The store.
    pub store: Store,
    /// The job controller.
    pub controller: Arc<Controller>,
    /// The token clients must present.
    pub token: String,
}

/// An error answer: its status and a message naming what is wrong.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": {"message": self.1}}))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job {id}"))
}

/// The API's routes over `app`.
pub fn router(app: Arc<App>) -> Router {
    let authed = Router::new()
        .route("/api/jobs", post(launch).get(list))
        .route("/api/jobs/{id}", get(detail))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/logs", get(logs))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), auth));
    Router::new()
        .route("/api/health", get(|| async { Json(json!({"status": "ok"})) }))
        .merge(authed)
        .with_state(app)
}

async fn auth(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if given.as_bytes().ct_eq(app.token.as_bytes()).into() {
        next.run(request).await
    } else {
        ApiError(StatusCode::UNAUTHORIZED, "a valid token is required (Authorization: Bearer TOKEN)".into())
            .into_response()
    }
}

async fn launch(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let job: LoadedJob = serde_json::from_slice(&body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("not a job spec: {e}")))?;
    job.spec.check().map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    if job.spec.backend.kind == BackendKind::Ssh && job.hosts.len() < job.spec.num_nodes {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`num_nodes` = {}: the fleet has {} host(s)", job.spec.num_nodes, job.hosts.len()),
        ));
    }
    if !job.workdir.is_dir() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`workdir`: {} is not a folder on the control plane's machine", job.workdir.display()),
        ));
    }
    let id = app.store.insert_job(&job).await?;
    app.store
        .event(
            id,
            0,
            &format!("launched: {} node(s) on {}", job.spec.num_nodes, job.spec.backend.kind.name()),
        )
        .await?;
    app.controller.wake.notify_one();
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

async fn list(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(app.store.jobs().await?).into_response())
}

async fn detail(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let job = app.store.job(id).await?.ok_or_else(|| not_found(id))?;
    let nodes = app.store.nodes(id, None).await?;
    let events = app.store.events(id).await?;
    Ok(Json(JobDetail { job, nodes, events }).into_response())
}

async fn cancel(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let job = app.store.job(id).await?.ok_or_else(|| not_found(id))?;
    if !app.store.request_cancel(id).await? {
        return Err(ApiError(StatusCode::CONFLICT, format!("job {id} is already {}", job.status.as_str())));
    }
    app.controller.wake.notify_one();
    Ok(Json(json!({"id": id, "cancelling": true})).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<i64>,
    node: Option<i64>,
    offset: Option<u64>,
}

async fn logs(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let job = app.store.job(id).await?.ok_or_else(|| not_found(id))?;
    let attempt = q.attempt.unwrap_or(job.attempt);
    let node = q.node.unwrap_or(0);
    if node < 0 || node >= job.num_nodes {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("`node` = {node}: job {id} has nodes 0 to {}", job.num_nodes - 1),
        ));
    }
    if attempt < 1 || attempt > job.attempt {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("job {id} has no attempt {attempt} (it is at attempt {})", job.attempt),
        ));
    }
    let path = app.controller.log_path(id, attempt, node);
    let offset = q.offset.unwrap_or(0);
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, Vec<u8>)> {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
            Err(e) => return Err(e),
        };
        let size = f.metadata()?.len();
        let mut bytes = Vec::new();
        if offset < size {
            f.seek(SeekFrom::Start(offset))?;
            // At most 4 MiB an answer: a client follows with the next offset.
            f.take(4 << 20).read_to_end(&mut bytes)?;
        }
        Ok((size, bytes))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("the log: {e}")))?;
    let mut headers = HeaderMap::new();
    headers.insert("x-volt-log-size", read.0.into());
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok((headers, read.1).into_response())
}
