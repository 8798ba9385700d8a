//! Server and endpoint options, with LitServe's names where it has them.
use crate::api::Device;
use crate::error::ServeError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Options of the whole server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on.
    pub host: String,
    /// Port (0 picks a free one).
    pub port: u16,
    /// Largest request body accepted (413 beyond).
    pub max_payload_bytes: usize,
    /// Deadline of a whole request: queue, predict and stream (504 beyond).
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "millis")]
    pub shutdown_grace: Duration,
    /// API keys; with none (and no `VOLT_API_KEY`), no authentication.
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            max_payload_bytes: 1 << 20,
            timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            api_keys: Vec::new(),
        }
    }
}

/// Options of one endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// URL path, e.g. `/predict`.
    pub path: String,
    /// Devices to run workers on.
    pub devices: Vec<Device>,
    /// Worker threads per device, each with its own model.
    pub workers_per_device: usize,
    /// Largest batch handed to `predict`.
    pub max_batch_size: usize,
    /// How long a worker waits to fill a batch after its first request.
    #[serde(with = "millis")]
    pub batch_timeout: Duration,
    /// Inputs waiting for a worker before new requests get 503. A request is admitted
    /// while fewer wait, and then all its inputs go in (an embeddings request may hold
    /// up to 2,048), so one request is never refused for its own size.
    pub max_queue: usize,
    /// Serve through `predict_stream` (SSE, or NDJSON when the client asks for it).
    pub stream: bool,
    /// Streams (and generations answered whole): the deadline to the first chunk, queue
    /// wait included. When set it replaces the server's request timeout once the request
    /// is queued, so that a long generation still producing chunks is not cut off; unset,
    /// the request timeout bounds the whole stream.
    #[serde(with = "opt_millis")]
    pub first_chunk_timeout: Option<Duration>,
    /// With `first_chunk_timeout`: the longest wait between two chunks (unset: none).
    #[serde(with = "opt_millis")]
    pub idle_timeout: Option<Duration>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            path: "/predict".into(),
            devices: vec![Device::Cpu],
            workers_per_device: 1,
            max_batch_size: 1,
            batch_timeout: Duration::from_millis(0),
            max_queue: 1024,
            stream: false,
            first_chunk_timeout: None,
            idle_timeout: None,
        }
    }
}

impl EndpointConfig {
    /// The default endpoint at `path`.
    pub fn at(path: &str) -> Self {
        EndpointConfig { path: path.into(), ..Self::default() }
    }

    pub(crate) fn validate(&self) -> Result<(), ServeError> {
        let bad = |field: &str, why: &str| {
            Err(ServeError::Config(format!("endpoint {}: {field} {why}", self.path)))
        };
        if !self.path.starts_with('/') {
            return bad("path", "must start with '/'");
        }
        if self.devices.is_empty() {
            return bad("devices", "must list at least one device");
        }
        if self.workers_per_device == 0 {
            return bad("workers_per_device", "must be at least 1");
        }
        if self.max_batch_size == 0 {
            return bad("max_batch_size", "must be at least 1");
        }
        if self.max_queue == 0 {
            return bad("max_queue", "must be at least 1");
        }
        if self.first_chunk_timeout.is_some_and(|d| d.is_zero()) {
            return bad("first_chunk_timeout", "must be above 0 ms (leave it unset for the request timeout)");
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return bad("idle_timeout", "must be above 0 ms (leave it unset for none)");
        }
        if self.idle_timeout.is_some() && self.first_chunk_timeout.is_none() {
            return bad(
                "idle_timeout",
                "needs first_chunk_timeout: the request timeout bounds the whole stream",
            );
        }
        Ok(())
    }
}

mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|v| v.map(Duration::from_millis))
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
