//! Tensor models behind volt-serve: a model that takes and gives named tensors (users'
//! exported PyTorch models, say) answers volt's `{"inputs": ...}` at its endpoint's path
//! and KServe/Triton's Open Inference Protocol v2 at `/v2/...`.
//!
//! A request's path ([`predict_route`], [`infer_route`]): read and parse the body → decode
//! its tensors and check every one against the model's [`Signature`] (400 naming the
//! input) → each row of the batch becomes its own job, so that workers batch rows of many
//! requests together and split a request with more rows than a call takes → the worker
//! runs [`TensorModel::predict`] → the rows come back in order and are stacked again.
//! volt-serve still knows nothing of libtorch: tensors here are host bytes.
pub mod decode;
pub mod dtype;
pub mod encode;
pub mod signature;

pub use dtype::DType;
pub use signature::{BatchRange, Dim, HostTensor, Row, Signature, TensorSpec, ValueRange};

use crate::api::{Device, InferenceApi};
use crate::config::EndpointConfig;
use crate::error::{ApiError, ErrorKind, HttpError, ServeError};
use crate::server::{Endpoint, Server};
use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A model of tensors in, tensors out.
pub trait TensorModel: Send + Sync + 'static {
    /// What one worker owns (a loaded module, a runner).
    type Worker: Send + 'static;
    /// The model's name in the protocol's routes.
    fn name(&self) -> &str;
    /// What it takes and gives.
    fn signature(&self) -> &Signature;
    /// The protocol's `platform` (e.g. `pytorch_aoti`).
    fn platform(&self) -> &str;
    /// Loads one worker's model on `device` (on the worker's thread).
    fn setup(&self, device: Device) -> Result<Self::Worker, ApiError>;
    /// Runs rows (already checked against the signature): one result per input row, in
    /// order. Rows may come from many requests, so a failure that concerns some rows (a
    /// group of shapes the model refuses) fails those rows only.
    fn predict(&self, worker: &mut Self::Worker, rows: Vec<Row>) -> Vec<Result<Row, ApiError>>;
    /// More for `/info`.
    fn info(&self) -> Value {
        Value::Null
    }
}

/// A [`TensorModel`] as an [`InferenceApi`] whose inputs are rows.
struct Rows<M>(M);

impl<M: TensorModel> InferenceApi for Rows<M> {
    type Model = M::Worker;
    type Input = Row;
    type Output = Result<Row, ApiError>;

    fn setup(&self, device: Device) -> Result<M::Worker, ApiError> {
        self.0.setup(device)
    }
    fn decode_request(&self, _body: &Value) -> Result<Row, ApiError> {
        Err(ApiError::Internal("tensor requests are decoded by their routes".into()))
    }
    fn predict(&self, worker: &mut M::Worker, rows: Vec<Row>) -> Result<Vec<Self::Output>, ApiError> {
        let n = rows.len();
        let out = self.0.predict(worker, rows);
        if out.len() != n {
            return Err(ApiError::Internal(format!("the model answered {} rows for {n}", out.len())));
        }
        Ok(out)
    }
    fn encode_response(&self, _output: Self::Output) -> Result<Value, ApiError> {
        Err(ApiError::Internal("tensor responses are encoded by their routes".into()))
    }
    fn info(&self) -> Value {
        let sig = self.0.signature();
        json!({
            "name": self.0.name(),
            "platform": self.0.platform(),
            "inputs": sig.describe(&sig.inputs),
            "outputs": sig.describe(&sig.outputs),
            "batch": sig.batch.map(|b| json!({"min": b.min, "max": b.max})),
            "details": self.0.info(),
        })
    }
}

impl Server {
    /// Serves `model` at `config.path` (volt's tensor JSON) and at the Open Inference
    /// Protocol's `/v2` routes. The endpoint's `max_batch_size` is capped at the model's
    /// largest batch; a model that does not batch runs one request per call.
    pub fn tensor_model<M: TensorModel>(
        self,
        mut config: EndpointConfig,
        model: M,
    ) -> Result<Self, ServeError> {
        config.stream = false;
        match model.signature().batch {
            Some(b) => {
                if let Some(max) = b.max {
                    config.max_batch_size = config.max_batch_size.min(max);
                }
            }
            None => config.max_batch_size = 1,
        }
        let path = config.path.clone();
        self.add_routes(config, Rows(model), &V2_ROUTES, move |ep| v2_router(ep, &path))
    }
}

/// volt's route at `path` and the protocol's, all on one endpoint.
fn v2_router<M: TensorModel>(ep: Ep<M>, path: &str) -> Router {
    let e = || Arc::clone(&ep);
    let server = json!({"name": "volt", "version": env!("CARGO_PKG_VERSION"), "extensions": []});
    let (predict, infer, infer_v) = (e(), e(), e());
    let (ready_ep, meta, meta_v, model_r, model_r_v) = (e(), e(), e(), e(), e());
    Router::new()
        .route(path, post(move |headers: HeaderMap, body: Body| predict_route(predict, headers, body)))
        .route(V2_ROUTES[0], get(move || async move { Json(server) }))
        .route(V2_ROUTES[1], get(|| async { StatusCode::OK }))
        .route(V2_ROUTES[2], get(move || async move { ready(&ready_ep) }))
        .route(V2_ROUTES[3], get(move |Path(name): Path<String>| async move { metadata(&meta, &name) }))
        .route(V2_ROUTES[4], get(move |Path(name): Path<String>| async move { model_ready(&model_r, &name) }))
        .route(
            V2_ROUTES[5],
            post(move |Path(name): Path<String>, headers: HeaderMap, body: Body| {
                infer_route(infer, name, headers, body)
            }),
        )
        .route(
            V2_ROUTES[6],
            get(move |Path((name, v)): Path<(String, String)>| async move {
                versioned(&meta_v, &name, &v, metadata)
            }),
        )
        .route(
            V2_ROUTES[7],
            post(move |Path((name, v)): Path<(String, String)>, headers: HeaderMap, body: Body| async move {
                match unknown_version(&v) {
                    Some(e) => e,
                    None => infer_route(infer_v, name, headers, body).await,
                }
            }),
        )
        .route(
            V2_ROUTES[8],
            get(move |Path((name, v)): Path<(String, String)>| async move {
                versioned(&model_r_v, &name, &v, model_ready)
            }),
        )
}

/// The protocol's routes (each tensor model server has one model).
const V2_ROUTES: [&str; 9] = [
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}",
    "/v2/models/{name}/versions/{version}/infer",
    "/v2/models/{name}/versions/{version}/ready",
];

type Ep<M> = Arc<Endpoint<Rows<M>>>;

/// An error in the protocol's shape, `{"error": "message"}`.
fn v2_error(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Response {
    let mut response = (status, Json(json!({"error": message.into()}))).into_response();
    response.extensions_mut().insert(ErrorKind(kind));
    response
}

fn v2_from(e: HttpError) -> Response {
    let mut response = v2_error(e.status, e.kind, e.message);
    if let Some(secs) = e.retry_after {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
    }
    response
}

fn ready<M: TensorModel>(ep: &Ep<M>) -> Response {
    if ep.serving.load(Ordering::SeqCst) > 0 {
        StatusCode::OK.into_response()
    } else {
        v2_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable_error", "the model is loading")
    }
}

/// The 404 for a model name this server does not serve.
fn unknown_model<M: TensorModel>(ep: &Ep<M>, name: &str) -> Option<Response> {
    (name != ep.api.0.name()).then(|| {
        v2_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("no model named {name:?}; this server serves {:?}", ep.api.0.name()),
        )
    })
}

/// The 404 for a version other than the one ("1") a served model has.
fn unknown_version(version: &str) -> Option<Response> {
    (version != "1").then(|| {
        v2_error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("no version {version:?}; the model has version \"1\""),
        )
    })
}

fn versioned<M: TensorModel>(
    ep: &Ep<M>,
    name: &str,
    version: &str,
    f: fn(&Ep<M>, &str) -> Response,
) -> Response {
    unknown_version(version).unwrap_or_else(|| f(ep, name))
}

fn metadata<M: TensorModel>(ep: &Ep<M>, name: &str) -> Response {
    if let Some(e) = unknown_model(ep, name) {
        return e;
    }
    let sig = ep.api.0.signature();
    Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": ep.api.0.platform(),
        "inputs": sig.describe(&sig.inputs),
        "outputs": sig.describe(&sig.outputs),
    }))
    .into_response()
}

fn model_ready<M: TensorModel>(ep: &Ep<M>, name: &str) -> Response {
    unknown_model(ep, name).unwrap_or_else(|| ready(ep))
}

/// A request's rows, or the first of its rows' errors.
fn answered(rows: Vec<Result<Row, ApiError>>) -> Result<Vec<Row>, HttpError> {
    rows.into_iter().collect::<Result<Vec<_>, _>>().map_err(HttpError::from)
}

/// `POST {path}`: volt's tensor JSON.
async fn predict_route<M: TensorModel>(ep: Ep<M>, headers: HeaderMap, body: Body) -> Response {
    let deadline = ep.deadline();
    let work = async {
        let value = ep.read_json(&headers, body).await?;
        let request = decode::predict_request(ep.api.0.signature(), &value)?;
        let outputs = answered(ep.call_all(request.rows, deadline).await?)?;
        let body = encode::predict_response(ep.api.0.signature(), &outputs, request.format)
            .map_err(HttpError::internal)?;
        Ok(Json(body).into_response())
    };
    ep.answer_by(deadline, work).await
}

/// `POST /v2/models/{name}/infer`: the Open Inference Protocol.
async fn infer_route<M: TensorModel>(ep: Ep<M>, name: String, headers: HeaderMap, body: Body) -> Response {
    if let Some(e) = unknown_model(&ep, &name) {
        return e;
    }
    let deadline = ep.deadline();
    let work = async {
        let value = ep.read_json(&headers, body).await?;
        let request = decode::infer_request(ep.api.0.signature(), &value)?;
        let outputs = answered(ep.call_all(request.rows, deadline).await?)?;
        encode::infer_response(ep.api.0.signature(), &name, request.id, &outputs, request.outputs.as_deref())
            .map_err(HttpError::internal)
    };
    match ep.by(deadline, work).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => v2_from(e),
    }
}
