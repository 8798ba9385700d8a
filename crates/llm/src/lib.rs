//! volt-llm: serving pretrained LLMs from the files people download (GGUF): the
//! tokenizer and chat template the file carries, and the models that read its tensors.
#![warn(missing_docs)]

pub mod chat;
pub mod chat_template;
pub mod engine;
mod error;
pub mod llama;
pub mod sampling;
pub mod tokenizer;

pub use chat::LlmChat;
pub use chat_template::{ChatTemplate, Message};
pub use engine::{Engine, EngineConfig};
pub use error::{LlmError, Result};
pub use llama::{KvCache, Llama, LlamaConfig, Step};
pub use tokenizer::GgufTokenizer;
