//! volt-serve: a LitServe-class inference server framework.
//!
//! Implement [`InferenceApi`] (setup, decode_request, predict, encode_response); the
//! [`Server`] gives dynamic batching on dedicated worker threads, streaming (SSE and
//! NDJSON), deadlines, backpressure, payload limits, API keys, Prometheus metrics,
//! health and info routes, graceful shutdown, and OpenAI-compatible specs.
//! It knows nothing of libtorch: the model is the user's, and the tensor API ([`tensor`])
//! carries tensors as host bytes.
#![warn(missing_docs)]

mod api;
pub mod auth;
mod body;
pub mod client;
mod config;
mod error;
pub mod fields;
pub mod metrics;
mod metrics_layer;
pub mod openai;
mod server;
mod stream;
pub mod tensor;
mod worker;

pub use api::{Device, InferenceApi, StreamOutput, StreamSender};
pub use config::{EndpointConfig, ServerConfig};
pub use error::{ApiError, HttpError, ServeError};
pub use server::{RunningServer, Server, BUILTIN_ROUTES};

/// The serving guide's code blocks, compiled by `cargo test` so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/serving.md")]
struct ServingGuide;
