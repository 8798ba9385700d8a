//! volt-llm: serving pretrained LLMs from the files people download (GGUF): the
//! tokenizer and chat template the file carries, and the models that read its tensors.
#![warn(missing_docs)]

pub mod chat;
pub mod chat_template;
pub mod engine;
mod error;
pub mod kernels;
pub mod llama;
pub mod lora;
pub mod model;
pub mod quantized;
pub mod sampling;
pub mod tokenizer;
pub mod utf8_stream;
pub mod weights;

pub use chat::LlmChat;
pub use chat_template::{ChatTemplate, Message};
pub use engine::{Engine, EngineConfig};
pub use error::{LlmError, Result};
pub use llama::{KvCache, Llama, LlamaConfig};
pub use lora::Adapter;
pub use model::{Model, Step};
pub use quantized::{QuantCache, QuantLlama};
pub use tokenizer::{GgufTokenizer, Tokenizer};
pub use weights::{HfWeights, Weights};
