//! What the user writes: an [`InferenceApi`], LitServe's `LitAPI` in Rust.
use crate::error::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

/// A device a worker is pinned to; volt-serve only passes it to `setup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU.
    Cpu,
    /// GPU number `n`.
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A model behind an endpoint. One `InferenceApi` value is shared by the HTTP side
/// (`decode_request`, `encode_response`); each worker thread owns its own `Model` made by
/// `setup`, and only workers call `predict`, never the async runtime.
pub trait InferenceApi: Send + Sync + 'static {
    /// A worker's model instance.
    type Model: Send + 'static;
    /// One decoded request.
    type Input: Send + 'static;
    /// One response (or one chunk, when streaming).
    type Output: Send + 'static;

    /// Loads the model for one worker on `device` (called on the worker's thread).
    fn setup(&self, device: Device) -> Result<Self::Model, ApiError>;

    /// Turns a request body into an input; a bad field is an `ApiError::BadRequest` naming it.
    fn decode_request(&self, body: &Value) -> Result<Self::Input, ApiError>;

    /// Predicts a batch: one output per input, in order.
    fn predict(
        &self,
        model: &mut Self::Model,
        inputs: Vec<Self::Input>,
    ) -> Result<Vec<Self::Output>, ApiError>;

    /// Turns an output (or a streamed chunk) into JSON.
    fn encode_response(&self, output: Self::Output) -> Result<Value, ApiError>;

    /// Streams chunks for a batch of inputs through `out`. Endpoints with `stream = true`
    /// call this instead of `predict`.
    fn predict_stream(
        &self,
        model: &mut Self::Model,
        inputs: Vec<Self::Input>,
        out: &mut StreamOutput<Self::Output>,
    ) -> Result<(), ApiError> {
        let _ = (model, inputs, out);
        Err(ApiError::Internal("this API does not implement predict_stream".into()))
    }

    /// Metadata shown at `/info`.
    fn info(&self) -> Value {
        Value::Null
    }
}

/// Where `predict_stream` sends each request's chunks, in order, as soon as they exist.
pub struct StreamOutput<O> {
    /// One per input; `None` once [`StreamOutput::detach`] took it.
    pub(crate) senders: Vec<Option<UnboundedSender<Result<O, ApiError>>>>,
}

impl<O> StreamOutput<O> {
    /// Sends a chunk for input `i`; returns false when that client has gone (stop producing for it).
    pub fn send(&mut self, i: usize, chunk: O) -> bool {
        self.sender(i).is_some_and(|s| s.send(Ok(chunk)).is_ok())
    }
    /// Whether input `i`'s client has disconnected.
    pub fn is_cancelled(&self, i: usize) -> bool {
        self.sender(i).is_none_or(|s| s.is_closed())
    }
    /// Whether every client of the batch has disconnected.
    pub fn all_cancelled(&self) -> bool {
        self.senders.iter().flatten().all(|s| s.is_closed())
    }
    /// Number of inputs in the batch.
    pub fn len(&self) -> usize {
        self.senders.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }
    /// Takes input `i`'s stream out of the batch, to go on sending after `predict_stream`
    /// returns: an engine that batches continuously keeps its requests' streams while
    /// the worker goes back for more. `None` when it was taken already.
    pub fn detach(&mut self, i: usize) -> Option<StreamSender<O>> {
        self.senders.get_mut(i).and_then(Option::take).map(StreamSender)
    }
    fn sender(&self, i: usize) -> Option<&UnboundedSender<Result<O, ApiError>>> {
        self.senders.get(i).and_then(Option::as_ref)
    }
}

/// One request's stream, detached from its batch ([`StreamOutput::detach`]); dropping it
/// ends the stream.
pub struct StreamSender<O>(UnboundedSender<Result<O, ApiError>>);

impl<O> StreamSender<O> {
    /// Sends a chunk; returns false when the client has gone.
    pub fn send(&self, chunk: O) -> bool {
        self.0.send(Ok(chunk)).is_ok()
    }
    /// Ends the stream with `error`.
    pub fn fail(&self, error: ApiError) {
        let _ = self.0.send(Err(error));
    }
    /// Whether the client has disconnected.
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}
