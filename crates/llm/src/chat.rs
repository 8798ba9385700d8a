//! An LLM behind volt-serve's OpenAI chat adapter: each request's messages go through the
//! model's chat template and tokenizer, then to the engine, whose tokens come back as
//! text that never splits a UTF-8 character across chunks.
use crate::chat_template::{ChatTemplate, Message};
use crate::engine::{Engine, EngineConfig, Event, Finish, Refused, Request};
use crate::llama::{Llama, LlamaConfig};
use crate::lora::Adapter;
use crate::quantized::QuantLlama;
use crate::sampling::Sampling;
use crate::tokenizer::{GgufTokenizer, Tokenizer};
use crate::utf8_stream::Utf8Stream;
use crate::weights::{GgufWeights, HfWeights, Weights};
use std::sync::Arc;
use volt_formats::gguf::Gguf;
use volt_serve::metrics::GenerationMetrics;
use volt_serve::openai::{ChatApi, ChatDelta, ChatRequest, TokenLogprob};
use volt_serve::{ApiError, Device, StreamOutput, StreamSender};

/// Chat completions from a model served by an [`Engine`] (clones share it: one for
/// `/v1/chat/completions`, one for `/v1/completions`).
#[derive(Clone)]
pub struct LlmChat {
    /// The engine that generates.
    pub engine: Arc<Engine>,
    /// The model's tokenizer.
    pub tokenizer: Arc<dyn Tokenizer>,
    /// The model's chat template.
    pub template: Arc<ChatTemplate>,
    /// The name responses carry.
    pub name: String,
}

impl LlmChat {
    /// Chat completions from `engine`, which runs a model that reads `tokenizer`'s ids;
    /// conversations become prompts through `template`.
    pub fn new(engine: Engine, tokenizer: Arc<dyn Tokenizer>, template: ChatTemplate, name: String) -> Self {
        LlmChat { engine: Arc::new(engine), tokenizer, template: Arc::new(template), name }
    }

    /// Reads a GGUF file (its tokenizer, chat template and weights) and starts an engine
    /// over it: on the CPU the weights stay quantized and `threads` threads run volt's
    /// kernels; on a CUDA device they are dequantized (the float path). `adapter`'s
    /// LoRA pairs ride beside the weights, unmerged. Errors name the file and what is wrong.
    pub fn from_gguf(
        path: &std::path::Path,
        adapter: Option<&Adapter>,
        config: EngineConfig,
        device: tch::Device,
        threads: usize,
    ) -> crate::Result<Self> {
        config.check().map_err(crate::LlmError::Input)?;
        let in_file = |e: crate::LlmError| crate::LlmError::Model(format!("{}: {e}", path.display()));
        let bytes =
            std::fs::read(path).map_err(|e| crate::LlmError::Model(format!("{}: {e}", path.display())))?;
        let g = Gguf::parse(&bytes).map_err(|e| in_file(e.into()))?;
        let tokenizer = GgufTokenizer::from_gguf(&g).map_err(in_file)?;
        let template = ChatTemplate::from_gguf_tokens(&g).map_err(in_file)?;
        let llama = LlamaConfig::from_gguf(&g).map_err(in_file)?;
        let name = g.metadata.get("general.name").and_then(|v| v.as_str()).unwrap_or("gguf").to_owned();
        let weights = GgufWeights { bytes: &bytes, header: &g };
        let loaded = Loaded { weights: &weights, llama, tokenizer, template, name };
        loaded.start(adapter, config, device, threads).map_err(in_file)
    }

    /// Reads a Hugging Face model folder (`config.json`, safetensors, `tokenizer.json`,
    /// the chat template) and starts an engine over it, as [`LlmChat::from_gguf`] does;
    /// on the CPU the float weights run on volt's kernels.
    pub fn from_hf_folder(
        dir: &std::path::Path,
        adapter: Option<&Adapter>,
        config: EngineConfig,
        device: tch::Device,
        threads: usize,
    ) -> crate::Result<Self> {
        config.check().map_err(crate::LlmError::Input)?;
        let weights = HfWeights::open(dir)?;
        let tokenizer = GgufTokenizer::from_hf_folder(dir)?;
        let template = ChatTemplate::from_hf_folder(dir)?;
        let name = dir.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        let llama = weights.config().clone();
        let in_dir = |e: crate::LlmError| crate::LlmError::Model(format!("{}: {e}", dir.display()));
        Loaded { weights: &weights, llama, tokenizer, template, name }
            .start(adapter, config, device, threads)
            .map_err(in_dir)
    }
    /// The prompt's tokens for `request` (its messages through the chat template, or its
    /// raw prompt), or a 400 naming what is wrong with it.
    fn prompt(&self, request: &ChatRequest) -> Result<Vec<u32>, ApiError> {
        let (field, text) = match &request.prompt {
            Some(raw) => ("prompt", raw.clone()),
            None => {
                let messages: Vec<Message> = request
                    .messages
                    .iter()
                    .map(|m| Message { role: m.role.clone(), content: m.content.clone() })
                    .collect();
                let text =
                    self.template.render(&messages, true).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                ("messages", text)
            }
        };
        let tokens = self.tokenizer.encode(&text).map_err(|e| ApiError::Internal(e.to_string()))?;
        let limit = self.engine.config().max_model_len;
        if tokens.is_empty() {
            return Err(ApiError::field(field, "holds no tokens"));
        }
        // A model that slides crops a long prompt, unless each of its positions is to be scored.
        let crops = self.engine.slides() && !(request.echo && request.logprobs.is_some());
        if tokens.len() >= limit && !crops {
            return Err(ApiError::field(
                field,
                format!(
                    "the prompt is {} tokens; this server holds at most {limit} per sequence",
                    tokens.len()
                ),
            ));
        }
        Ok(tokens)
    }

    /// `max_tokens`, checked against what the context leaves after `prompt` tokens (0
    /// only with `echo`: the prompt's scores alone). A model that slides past its context
    /// takes any number, and a context's worth when the request names none.
    fn max_tokens(&self, request: &ChatRequest, prompt: usize) -> Result<usize, ApiError> {
        let context = self.engine.config().max_model_len;
        let room = if self.engine.slides() { usize::MAX } else { context - prompt };
        match request.max_tokens {
            None => Ok(room.min(context)),
            Some(0) if request.echo => Ok(0),
            Some(0) => Err(ApiError::field("max_tokens", "must be at least 1")),
            Some(n) if n > room => Err(ApiError::field(
                "max_tokens",
                format!(
                    "{n} tokens do not fit: the prompt is {prompt} tokens and a sequence holds at most {}",
                    prompt + room
                ),
            )),
            Some(n) => Ok(n),
        }
    }

    fn request(
        &self,
        request: &mut ChatRequest,
        out: StreamSender<ChatDelta>,
    ) -> Result<Request, (ApiError, StreamSender<ChatDelta>)> {
        // `check` tokenized it already (on the HTTP side); otherwise it is done here.
        let prompt = match request.prompt_tokens.take().map_or_else(|| self.prompt(request), Ok) {
            Ok(p) => p,
            Err(e) => return Err((e, out)),
        };
        let max_tokens = match self.max_tokens(request, prompt.len()) {
            Ok(n) => n,
            Err(e) => return Err((e, out)),
        };
        let prompt_tokens = prompt.len();
        let tokenizer = Arc::clone(&self.tokenizer);
        let mut text = Utf8Stream::default();
        let prompt_ids = if request.echo && request.logprobs.is_some() { prompt.clone() } else { Vec::new() };
        let mut scored = 0;
        let logprob = {
            let tokenizer = Arc::clone(&tokenizer);
            move |id: u32, (lp, top): (f64, Vec<(u32, f64)>)| TokenLogprob {
                bytes: tokenizer.token_bytes(id).to_vec(),
                logprob: lp,
                top: top.into_iter().map(|(t, v)| (tokenizer.token_bytes(t).to_vec(), v)).collect(),
            }
        };
        let sink = move |event: Event| -> bool {
            match event {
                Event::Token { id, logprobs } => {
                    let piece = text.push(tokenizer.token_bytes(id));
                    out.send(ChatDelta {
                        text: piece,
                        prompt_tokens,
                        tokens: 1,
                        logprobs: logprobs.map(|l| logprob(id, l)).into_iter().collect(),
                        ..ChatDelta::default()
                    })
                }
                Event::PromptLogprobs(entries) => {
                    // Entries follow the prompt's tokens in order, the first without one.
                    let mut scores = Vec::with_capacity(entries.len());
                    for entry in entries {
                        let Some(&id) = prompt_ids.get(scored) else { break };
                        scored += 1;
                        scores.push((tokenizer.token_bytes(id).to_vec(), entry.map(|l| logprob(id, l))));
                    }
                    out.send(ChatDelta { prompt_tokens, prompt_logprobs: scores, ..ChatDelta::default() })
                }
                Event::Finished { reason, .. } => {
                    let finish = match reason {
                        Finish::Stop => "stop",
                        Finish::Length => "length",
                    };
                    out.send(ChatDelta {
                        text: text.finish(),
                        prompt_tokens,
                        finish_reason: Some(finish.into()),
                        ..ChatDelta::default()
                    })
                }
                Event::Error(e) => {
                    out.fail(ApiError::Internal(e));
                    false
                }
            }
        };
        Ok(Request {
            prompt,
            max_tokens,
            sampling: Sampling {
                temperature: request.temperature.unwrap_or(1.0),
                top_p: request.top_p.unwrap_or(1.0),
                top_k: request.top_k.unwrap_or(0),
                seed: request.seed,
                presence_penalty: request.presence_penalty,
                frequency_penalty: request.frequency_penalty,
            },
            logprobs: request.logprobs,
            echo: request.echo && request.logprobs.is_some(),
            sink: Box::new(sink),
        })
    }
}

impl ChatApi for LlmChat {
    type Model = ();
    fn setup(&self, _device: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn check(&self, request: &mut ChatRequest) -> Result<(), ApiError> {
        let prompt = self.prompt(request)?;
        self.max_tokens(request, prompt.len())?;
        request.prompt_tokens = Some(prompt);
        Ok(())
    }
    /// Hands each request to the engine and returns: the engine keeps generating for
    /// them while the worker fetches the next requests, which join between its steps.
    fn generate(
        &self,
        _model: &mut (),
        requests: Vec<ChatRequest>,
        out: &mut StreamOutput<ChatDelta>,
    ) -> Result<(), ApiError> {
        for (i, mut r) in requests.into_iter().enumerate() {
            let Some(sender) = out.detach(i) else { continue };
            match self.request(&mut r, sender) {
                Ok(req) => {
                    let mut req = req;
                    // Wait while the engine's queue is full: the server's own queue then
                    // fills and answers 503 with Retry-After.
                    loop {
                        match self.engine.submit(req) {
                            Ok(()) => break,
                            Err((Refused::Full, back)) => {
                                req = back;
                                std::thread::sleep(std::time::Duration::from_millis(2));
                            }
                            Err((Refused::Stopped, _)) => {
                                return Err(ApiError::Internal("the engine has stopped".into()));
                            }
                        }
                    }
                }
                Err((e, sender)) => sender.fail(e),
            }
        }
        Ok(())
    }
    fn model_name(&self) -> String {
        self.name.clone()
    }
    fn supports_completions(&self) -> bool {
        true
    }
    /// The engine's sampler applies them.
    fn supports_penalties(&self) -> bool {
        true
    }
    fn attach_metrics(&self, metrics: GenerationMetrics) {
        let _ = self.engine.stats().metrics.set(metrics);
    }
}

/// What a model file or folder holds, read and not yet running.
struct Loaded<'a> {
    weights: &'a dyn Weights,
    llama: LlamaConfig,
    tokenizer: GgufTokenizer,
    template: ChatTemplate,
    name: String,
}

impl Loaded<'_> {
    /// The engine over the model (quantized kernels on the CPU, the float path elsewhere).
    fn start(
        self,
        adapter: Option<&Adapter>,
        config: EngineConfig,
        device: tch::Device,
        threads: usize,
    ) -> crate::Result<LlmChat> {
        if self.tokenizer.vocab_size() > self.llama.vocab {
            return Err(crate::LlmError::Model(format!(
                "the tokenizer has {} tokens, the model's vocabulary {}",
                self.tokenizer.vocab_size(),
                self.llama.vocab
            )));
        }
        let context = self.llama.context_len;
        let config = EngineConfig { max_model_len: config.max_model_len.min(context), ..config };
        let eog = self.tokenizer.end_of_generation.clone();
        let started = match device {
            tch::Device::Cpu => Engine::start(
                QuantLlama::from_weights(self.weights, self.llama, adapter, threads)?,
                eog,
                config,
            ),
            _ => Engine::start(Llama::from_weights(self.weights, self.llama, adapter, device)?, eog, config),
        };
        let engine = started.map_err(|e| crate::LlmError::Model(format!("cannot start the engine: {e}")))?;
        Ok(LlmChat::new(engine, Arc::new(self.tokenizer), self.template, self.name))
    }
}
