//! `GET /v1/models` and `GET /v1/models/{id}`: the models of the server's OpenAI
//! endpoints, in OpenAI's shapes, so that clients' `models.list()` works.
use super::now_secs;
use crate::error::HttpError;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

/// The models of the server's OpenAI endpoints, each once, in the order they were added.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModelList(Vec<Value>);

impl ModelList {
    /// Adds `id` unless it is already listed (two endpoints may serve one model).
    pub(crate) fn add(&mut self, id: String) {
        if !self.0.iter().any(|m| m["id"] == id.as_str()) {
            self.0.push(json!({"id": id, "object": "model", "created": now_secs(), "owned_by": "volt"}));
        }
    }

    /// The two routes; `{*id}` so that ids with a slash (`org/name`) are found too.
    pub(crate) fn routes(self) -> Router {
        let list = Arc::new(json!({"object": "list", "data": self.0}));
        let one = Arc::clone(&list);
        Router::new().route("/v1/models", get(move || async move { Json(list.as_ref().clone()) })).route(
            "/v1/models/{*id}",
            get(move |Path(id): Path<String>| async move {
                let found = one["data"].as_array().and_then(|d| d.iter().find(|m| m["id"] == id.as_str()));
                match found {
                    Some(model) => Ok(Json(model.clone())),
                    None => Err(HttpError::new(
                        StatusCode::NOT_FOUND,
                        "invalid_request_error",
                        format!("the model `{id}` does not exist: GET /v1/models lists the served ones"),
                    )),
                }
            }),
        )
    }
}
