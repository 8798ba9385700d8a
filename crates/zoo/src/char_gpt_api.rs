//! char-gpt behind the OpenAI endpoints, on volt-llm's engine: a conversation's
//! messages, one per line, are the prompt; each generated character is one token.
use crate::char_gpt::{CharGpt, CharGptConfig};
use crate::shakespeare::Vocab;
use std::path::Path;
use std::sync::Arc;
use volt_llm::{ChatTemplate, Engine, EngineConfig, LlmChat, Tokenizer};
use volt_train::checkpoint::{restore_model, Checkpoint};

/// The prompt of a conversation: its messages' text, one per line.
const TEMPLATE: &str =
    "{% for m in messages %}{{ m.content }}{% if not loop.last %}\n{% endif %}{% endfor %}";

/// char-gpt's characters as tokens.
pub struct CharTokenizer {
    vocab: Vocab,
    bytes: Vec<Vec<u8>>,
}

impl CharTokenizer {
    /// The tokenizer of `vocab`.
    pub fn new(vocab: Vocab) -> Self {
        let bytes = (0..vocab.len() as i64).map(|i| vocab.decode(&[i]).into_bytes()).collect();
        CharTokenizer { vocab, bytes }
    }
}

impl Tokenizer for CharTokenizer {
    /// Characters outside the vocabulary are dropped: a character model cannot read them.
    fn encode(&self, text: &str) -> volt_llm::Result<Vec<u32>> {
        Ok(text.chars().filter_map(|c| self.vocab.id(c)).map(|i| i as u32).collect())
    }
    fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }
}

#[derive(serde::Deserialize)]
struct Hparams {
    config: CharGptConfig,
    vocab: Vocab,
}

/// Serves a char-gpt checkpoint written by `volt fit --model char-gpt`: reads its
/// configuration, vocabulary and weights (a bad file fails here, before the server
/// starts) and starts an engine over it on `device`. The engine's `max_model_len` is
/// at most the model's block; generations slide past it.
pub fn char_gpt_chat(
    checkpoint: &Path,
    config: EngineConfig,
    device: tch::Device,
) -> volt_train::Result<LlmChat> {
    let bad = |e: String| volt_train::Error::checkpoint(checkpoint, e);
    config.check().map_err(volt_train::Error::Config)?;
    let ckpt = Checkpoint::load(checkpoint)?;
    let h: Hparams = serde_json::from_value(ckpt.state.hparams.clone())
        .map_err(|e| bad(format!("not a char-gpt checkpoint: {e}")))?;
    let model = CharGpt::new(h.config.clone(), h.vocab.clone(), device).map_err(bad)?;
    restore_model(volt_train::VoltModule::var_store(&model), &ckpt, checkpoint)?;
    let config =
        EngineConfig { max_model_len: config.max_model_len.min(h.config.block_size as usize), ..config };
    let template = ChatTemplate::new(TEMPLATE, "", "").map_err(|e| bad(e.to_string()))?;
    let engine = Engine::start(model, Vec::new(), config)
        .map_err(|e| volt_train::Error::Config(format!("cannot start the engine: {e}")))?;
    Ok(LlmChat::new(engine, Arc::new(CharTokenizer::new(h.vocab)), template, "char-gpt".into()))
}
