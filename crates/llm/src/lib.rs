//! volt-llm: serving pretrained LLMs from the files people download (GGUF): the
//! tokenizer and chat template the file carries, and the models that read its tensors.
#![warn(missing_docs)]

pub mod chat_template;
mod error;
pub mod llama;
pub mod tokenizer;

pub use chat_template::{ChatTemplate, Message};
pub use error::{LlmError, Result};
pub use llama::{KvCache, Llama, LlamaConfig, Step};
pub use tokenizer::GgufTokenizer;
