//! OpenAI-compatible specs as adapters over the same core: `/v1/chat/completions`
//! (plain and streamed, `chat.rs`), `/v1/completions` (`completions.rs`), `/v1/embeddings` (`embeddings.rs`), and
//! `/v1/models` listing their models (`models.rs`).
//!
//! The user implements [`ChatApi`] or [`EmbeddingsApi`]; the adapters parse OpenAI's
//! request bodies, queue work on the endpoint's workers (batched across requests), and
//! answer in OpenAI's response and chunk formats.
mod chat;
mod completions;
mod embeddings;
mod logprobs;
mod models;

pub use chat::{ChatAdapter, ChatApi, ChatDelta, ChatMessage, ChatRequest};
pub use completions::{completion_request, CompletionAdapter};
pub use embeddings::{Embedding, EmbeddingsAdapter, EmbeddingsApi, EmbeddingsRequest, MAX_EMBEDDING_INPUTS};
pub use logprobs::TokenLogprob;

pub(crate) use models::ModelList;

use std::time::{SystemTime, UNIX_EPOCH};

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
