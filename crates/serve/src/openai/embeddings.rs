//! `/v1/embeddings`: OpenAI's embeddings over an [`EmbeddingsApi`].
use crate::api::{Device, InferenceApi};
use crate::config::EndpointConfig;
use crate::error::{ApiError, ServeError};
use crate::server::{Endpoint, Server};
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;

/// One embedding and the tokens its input took.
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding {
    /// The vector.
    pub vector: Vec<f32>,
    /// Tokens of the input (after truncation).
    pub tokens: usize,
}

/// An embedding model behind `/v1/embeddings`.
pub trait EmbeddingsApi: Send + Sync + 'static {
    /// A worker's model.
    type Model: Send + 'static;
    /// Loads the model on `device`.
    fn setup(&self, device: Device) -> Result<Self::Model, ApiError>;
    /// Embeds a batch of texts (gathered across requests), one vector per text, in order.
    fn embed(&self, model: &mut Self::Model, texts: Vec<String>) -> Result<Vec<Embedding>, ApiError>;
    /// The model's name in responses.
    fn model_name(&self) -> String;
    /// The width of the vectors when the model was trained so that their leading `d`
    /// components are an embedding too (as Matryoshka representation learning does),
    /// which lets a request ask for `dimensions: d` (1 to this width). `None`, the
    /// default: it was not, and a request giving `dimensions` is refused by name, since
    /// shortened vectors of such a model are not embeddings.
    fn supported_dimensions(&self) -> Option<usize> {
        None
    }
}

/// The [`InferenceApi`] that puts an [`EmbeddingsApi`] behind the core: one queue item per text.
pub struct EmbeddingsAdapter<E>(pub E);

impl<E: EmbeddingsApi> InferenceApi for EmbeddingsAdapter<E> {
    type Model = E::Model;
    type Input = String;
    type Output = Embedding;
    fn setup(&self, device: Device) -> Result<E::Model, ApiError> {
        self.0.setup(device)
    }
    fn decode_request(&self, body: &Value) -> Result<String, ApiError> {
        body.as_str().map(str::to_owned).ok_or_else(|| ApiError::field("input", "must be a string"))
    }
    fn predict(&self, model: &mut E::Model, inputs: Vec<String>) -> Result<Vec<Embedding>, ApiError> {
        self.0.embed(model, inputs)
    }
    fn encode_response(&self, output: Embedding) -> Result<Value, ApiError> {
        Ok(json!(output.vector))
    }
    fn info(&self) -> Value {
        json!({"spec": "openai.embeddings", "model": self.0.model_name()})
    }
}

/// Most texts one embeddings request may hold (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// An embeddings request, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingsRequest {
    /// The texts, in order.
    pub input: Vec<String>,
    /// The `model` field, when given.
    pub model: Option<String>,
    /// `encoding_format: "base64"`: vectors as base64 of little-endian f32s.
    pub base64: bool,
    /// Shorten each vector to this many leading components, renormalised.
    pub dimensions: Option<usize>,
}

const EMBEDDINGS_FIELDS: [&str; 5] = ["input", "model", "encoding_format", "user", "dimensions"];

impl EmbeddingsRequest {
    /// Parses an OpenAI embeddings body for a model whose
    /// [`EmbeddingsApi::supported_dimensions`] is `supported_dimensions`; errors name
    /// the bad field.
    pub fn from_json(body: &Value, supported_dimensions: Option<usize>) -> Result<Self, ApiError> {
        let Some(fields) = body.as_object() else {
            return Err(ApiError::BadRequest("the body must be a JSON object".into()));
        };
        if let Some(unknown) = fields.keys().find(|k| !EMBEDDINGS_FIELDS.contains(&k.as_str())) {
            return Err(ApiError::field(unknown, "is not a field of an embeddings request"));
        }
        let input = match fields.get("input") {
            None | Some(Value::Null) => return Err(ApiError::field("input", "is missing")),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(ApiError::field("input", "must not be an empty list"))
            }
            Some(Value::Array(items)) if items.len() > MAX_EMBEDDING_INPUTS => {
                return Err(ApiError::field(
                    "input",
                    format!(
                        "{} texts are more than the {MAX_EMBEDDING_INPUTS} one request may hold",
                        items.len()
                    ),
                ))
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| ApiError::field("input", format!("item {i} is not a string")))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ApiError::field("input", "must be a string or a list of strings")),
        };
        let model = optional_str(body, "model")?.map(str::to_owned);
        optional_str(body, "user")?;
        let base64 = match optional_str(body, "encoding_format")? {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(ApiError::field(
                    "encoding_format",
                    format!("\"{other}\" is not \"float\" or \"base64\""),
                ))
            }
        };
        let dimensions = match (body.get("dimensions"), supported_dimensions) {
            (None | Some(Value::Null), _) => None,
            (Some(_), None) => {
                return Err(ApiError::field(
                    "dimensions",
                    "this model was not trained to shorten its vectors; leave `dimensions` out",
                ))
            }
            (Some(d), Some(width)) => match d.as_u64() {
                Some(d) if d >= 1 && d <= width as u64 => Some(d as usize),
                _ => {
                    return Err(ApiError::field(
                        "dimensions",
                        format!("{d} is not an integer from 1 to {width}"),
                    ))
                }
            },
        };
        Ok(EmbeddingsRequest { input, model, base64, dimensions })
    }
}

/// The leading `d` components of `v`, scaled back to unit length.
fn shortened(mut v: Vec<f32>, d: usize) -> Vec<f32> {
    v.truncate(d);
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
    v
}

/// A field that is absent, null or a string.
fn optional_str<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::field(field, format!("must be a string, not {other}"))),
    }
}

async fn embeddings_route<E: EmbeddingsApi>(
    ep: Arc<Endpoint<EmbeddingsAdapter<E>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let deadline = ep.deadline();
    let result = async {
        let value = ep.read_json(&headers, body).await?;
        let request = EmbeddingsRequest::from_json(&value, ep.api.0.supported_dimensions())?;
        let (base64, dimensions) = (request.base64, request.dimensions);
        // Each text is its own queue item, so the workers batch them across requests.
        let embeddings = ep.call_all(request.input, deadline).await?;
        let prompt_tokens: usize = embeddings.iter().map(|e| e.tokens).sum();
        let data: Vec<Value> = embeddings
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let vector = match dimensions {
                    Some(d) => shortened(e.vector, d),
                    None => e.vector,
                };
                let embedding = if base64 {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(vector)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        Ok(Json(json!({
            "object": "list", "data": data,
            "model": request.model.unwrap_or_else(|| ep.api.0.model_name()),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }))
        .into_response())
    };
    ep.answer_by(deadline, result).await
}

impl Server {
    /// Serves `api` at `/v1/embeddings` (or `config.path`).
    pub fn openai_embeddings<E: EmbeddingsApi>(
        self,
        mut config: EndpointConfig,
        api: E,
    ) -> Result<Self, ServeError> {
        config.stream = false;
        let model = api.model_name();
        let server = self.add(config, EmbeddingsAdapter(api), |ep| {
            post(move |headers: HeaderMap, body: Body| embeddings_route(ep, headers, body))
        })?;
        Ok(server.with_openai_model(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_requests_name_their_bad_fields() {
        let named = |body: Value, field: &str| {
            let e = EmbeddingsRequest::from_json(&body, None).expect_err("refused");
            assert!(e.to_string().starts_with(&format!("`{field}`: ")), "{body} -> {e}");
        };
        named(json!({}), "input");
        named(json!({"input": null}), "input");
        named(json!({"input": 5}), "input");
        named(json!({"input": []}), "input");
        named(json!({"input": ["a", 1]}), "input");
        named(json!({"input": [[1, 2]]}), "input");
        named(json!({"input": vec!["a"; MAX_EMBEDDING_INPUTS + 1]}), "input");
        named(json!({"input": "a", "encoding_format": "hex"}), "encoding_format");
        named(json!({"input": "a", "encoding_format": 1}), "encoding_format");
        named(json!({"input": "a", "model": 3}), "model");
        named(json!({"input": "a", "user": []}), "user");
        named(json!({"input": "a", "temperature": 1}), "temperature");
        assert!(EmbeddingsRequest::from_json(&json!(["a"]), None).is_err());
        named(json!({"input": "a", "dimensions": 2}), "dimensions");
        let r = EmbeddingsRequest::from_json(
            &json!({"input": vec![""; MAX_EMBEDDING_INPUTS], "encoding_format": "base64"}),
            None,
        )
        .expect("valid");
        assert_eq!((r.input.len(), r.base64, r.model), (MAX_EMBEDDING_INPUTS, true, None));
    }

    #[test]
    fn dimensions_from_1_to_the_width_of_a_model_that_can_shorten_its_vectors() {
        let parse = |d: Value| EmbeddingsRequest::from_json(&json!({"input": "a", "dimensions": d}), Some(8));
        assert_eq!(parse(json!(1)).expect("1").dimensions, Some(1));
        assert_eq!(parse(json!(8)).expect("8").dimensions, Some(8));
        assert_eq!(parse(json!(null)).expect("null").dimensions, None);
        for d in [json!(0), json!(9), json!(-1), json!(2.5), json!("2"), json!(u64::MAX)] {
            let e = parse(d.clone()).expect_err("refused");
            assert!(e.to_string().starts_with("`dimensions`: "), "{d} -> {e}");
        }
        assert_eq!(shortened(vec![3.0, 4.0, 12.0], 2), vec![0.6, 0.8]);
        assert_eq!(shortened(vec![0.0, 0.0, 1.0], 2), vec![0.0, 0.0], "a zero vector stays zero");
    }
}
