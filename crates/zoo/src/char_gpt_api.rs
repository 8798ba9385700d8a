//! char-gpt behind `/v1/chat/completions`: the conversation's text is the prompt, each
//! generated character is one streamed chunk.
use crate::char_gpt::{CharGpt, CharGptConfig, Generation, Sampling};
use crate::shakespeare::Vocab;
use std::path::PathBuf;
use volt_serve::openai::{ChatApi, ChatDelta, ChatRequest};
use volt_serve::{ApiError, Device, StreamOutput};
use volt_train::checkpoint::{restore_model, Checkpoint};

/// Characters generated when a request gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 256;

/// Serves a char-gpt checkpoint written by `volt fit --model char-gpt`.
pub struct CharGptChat {
    checkpoint: PathBuf,
    config: CharGptConfig,
    vocab: Vocab,
}

#[derive(serde::Deserialize)]
struct Hparams {
    config: CharGptConfig,
    vocab: Vocab,
}

impl CharGptChat {
    /// Reads the model's configuration and vocabulary from `checkpoint` and checks that
    /// its weights fit, so that a bad file fails before the server starts.
    pub fn new(checkpoint: PathBuf) -> volt_train::Result<Self> {
        let ckpt = Checkpoint::load(&checkpoint)?;
        let h: Hparams = serde_json::from_value(ckpt.state.hparams.clone()).map_err(|e| {
            volt_train::Error::checkpoint(&checkpoint, format!("not a char-gpt checkpoint: {e}"))
        })?;
        let probe = CharGpt::new(h.config.clone(), h.vocab.clone(), tch::Device::Cpu)
            .map_err(|e| volt_train::Error::checkpoint(&checkpoint, e))?;
        restore_model(volt_train::VoltModule::var_store(&probe), &ckpt, &checkpoint)?;
        Ok(CharGptChat { checkpoint, config: h.config, vocab: h.vocab })
    }

    /// The prompt of a conversation: its messages' text, one per line, in the model's
    /// vocabulary (other characters are dropped, as a character model cannot read them).
    fn prompt(&self, r: &ChatRequest) -> String {
        let text: Vec<&str> = r.messages.iter().map(|m| m.content.as_str()).collect();
        text.join("\n").chars().filter(|&c| self.vocab.id(c).is_some()).collect()
    }
}

impl ChatApi for CharGptChat {
    type Model = CharGpt;

    fn setup(&self, device: Device) -> Result<CharGpt, ApiError> {
        let device = match device {
            Device::Cpu => tch::Device::Cpu,
            Device::Cuda(n) => tch::Device::Cuda(n),
        };
        let model =
            CharGpt::new(self.config.clone(), self.vocab.clone(), device).map_err(ApiError::Internal)?;
        let ckpt = Checkpoint::load(&self.checkpoint).map_err(|e| ApiError::Internal(e.to_string()))?;
        restore_model(volt_train::VoltModule::var_store(&model), &ckpt, &self.checkpoint)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(model)
    }

    /// Steps every request of the batch one character at a time in turn, so that each
    /// stream gets its first character after one step of each, not after the others end.
    fn generate(
        &self,
        model: &mut CharGpt,
        requests: Vec<ChatRequest>,
        out: &mut StreamOutput<ChatDelta>,
    ) -> Result<(), ApiError> {
        let mut live: Vec<(usize, Generation)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let sampling = Sampling {
                max_tokens: r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                temperature: r.temperature.unwrap_or(1.0),
                top_k: r.top_k,
                top_p: r.top_p,
                seed: r.seed.unwrap_or_else(rand::random),
                presence_penalty: r.presence_penalty,
                frequency_penalty: r.frequency_penalty,
            };
            live.push((i, Generation::new(model, &self.prompt(r), sampling).map_err(ApiError::BadRequest)?));
        }
        while !live.is_empty() {
            let mut still = Vec::with_capacity(live.len());
            for (i, mut g) in live {
                if out.is_cancelled(i) {
                    continue;
                }
                let prompt_tokens = g.prompt_tokens();
                match g.step(model, true).map_err(ApiError::Internal)? {
                    Some(c) => {
                        let delta = ChatDelta {
                            text: c.to_string(),
                            prompt_tokens,
                            tokens: 1,
                            ..ChatDelta::default()
                        };
                        if out.send(i, delta) {
                            still.push((i, g));
                        }
                    }
                    None => {
                        let done = ChatDelta {
                            finish_reason: Some("length".into()),
                            prompt_tokens,
                            ..ChatDelta::default()
                        };
                        out.send(i, done);
                    }
                }
            }
            live = still;
        }
        Ok(())
    }

    fn model_name(&self) -> String {
        "char-gpt".into()
    }

    /// [`Generation`] applies them at each character.
    fn supports_penalties(&self) -> bool {
        true
    }
}
