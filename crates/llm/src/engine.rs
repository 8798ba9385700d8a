//! The LLM engine: continuous batching over one model on a thread of its own.
//!
//! A step, top to bottom ([`Engine::run`]): admit waiting requests while fewer than
//! `max_num_seqs` run → give each running sequence its next input (a chunk of its prompt,
//! at most `prefill_chunk` tokens a step in all, or the token it sampled last) → one
//! batched forward over all of them ([`Model::step`]) → sample each sequence that has
//! read its whole prompt, hand the token to its sink → drop the sequences that finished
//! (end of generation, `max_tokens`, the context) or whose client left. Requests join and
//! leave between steps; one that fails fails alone. A model that [`Model::slides`] is not
//! ended by the context: its sequence re-reads its last half-context into a fresh cache,
//! which is one more prefill.
use crate::model::{Model, Step};
use crate::sampling::{log_probs, Sampler, Sampling};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;
use volt_serve::metrics::GenerationMetrics;

/// How much the engine holds at once.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Sequences generating at once (vLLM's `max_num_seqs`).
    pub max_num_seqs: usize,
    /// Longest prompt plus completion a sequence may reach (vLLM's `max_model_len`).
    pub max_model_len: usize,
    /// Prompt tokens read per step, over all sequences, so that a long prompt does not
    /// stall the others' decoding.
    pub prefill_chunk: usize,
    /// Requests that may wait for a place; more are refused.
    pub max_waiting: usize,
}

impl EngineConfig {
    /// Refuses limits that would serve nothing, naming the option.
    pub fn check(&self) -> Result<(), String> {
        for (name, value, least) in [
            ("max_num_seqs", self.max_num_seqs, 1),
            ("max_model_len", self.max_model_len, 2),
            ("prefill_chunk", self.prefill_chunk, 1),
            ("max_waiting", self.max_waiting, 1),
        ] {
            if value < least {
                return Err(format!("{name} = {value}: must be at least {least}"));
            }
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_num_seqs: 16, max_model_len: 2048, prefill_chunk: 256, max_waiting: 64 }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// An end-of-generation token (or a stop the caller asked for).
    Stop,
    /// `max_tokens`, or the end of the context.
    Length,
}

/// A token's log-probability, and the most likely tokens at its position with theirs.
pub type TokenScore = (f64, Vec<(u32, f64)>);

/// What a request's sink receives, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token (not an end-of-generation one).
    Token {
        /// Its id.
        id: u32,
        /// Its log-probability, and the most likely alternatives', when asked for.
        logprobs: Option<TokenScore>,
    },
    /// The prompt's own tokens' log-probabilities (OpenAI's `echo` with `logprobs`): the
    /// first has none.
    PromptLogprobs(Vec<Option<TokenScore>>),
    /// The end, with the counts `usage` reports.
    Finished {
        /// Why.
        reason: Finish,
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// Tokens generated.
        completion_tokens: usize,
    },
    /// The request failed (the others go on).
    Error(String),
}

/// Where a request's events go; returning false means the client has gone.
pub type Sink = Box<dyn FnMut(Event) -> bool + Send>;

/// One generation to run.
pub struct Request {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// How to pick each token.
    pub sampling: Sampling,
    /// Report this many alternatives' log-probabilities with each token (`None`: no
    /// log-probabilities at all).
    pub logprobs: Option<usize>,
    /// Also report the prompt's log-probabilities.
    pub echo: bool,
    /// Where the events go.
    pub sink: Sink,
}

/// Why a request was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// As many requests wait as `max_waiting` allows.
    Full,
    /// The engine has stopped.
    Stopped,
}

/// What the engine reports of itself.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Sequences generating now.
    pub running: AtomicUsize,
    /// Requests waiting for a place.
    pub waiting: AtomicUsize,
    /// Positions held in the KV caches of running sequences.
    pub cached_tokens: AtomicUsize,
    /// Positions the caches may hold at most (`max_num_seqs × max_model_len`).
    pub capacity: usize,
    /// The server's metrics, once attached: the engine keeps them current.
    pub metrics: OnceLock<GenerationMetrics>,
}

impl EngineStats {
    /// A request joined the queue.
    fn queued(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = self.metrics.get() {
            m.waiting.inc();
            m.queue_depth.inc();
        }
    }
    /// A request left the queue: admitted, or refused on the way in.
    fn dequeued(&self) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if let Some(m) = self.metrics.get() {
            m.waiting.dec();
            m.queue_depth.dec();
        }
    }
    fn running(&self, running: usize, cached: usize) {
        self.running.store(running, Ordering::SeqCst);
        self.cached_tokens.store(cached, Ordering::SeqCst);
        if let Some(m) = self.metrics.get() {
            m.running.set(running as i64);
            m.kv_cache_usage.set(cached as f64 / self.capacity.max(1) as f64);
        }
    }
}

/// A handle to the engine thread.
pub struct Engine {
    tx: Option<SyncSender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<EngineStats>,
    config: EngineConfig,
    slides: bool,
}

struct Sequence<C> {
    request: Request,
    cache: C,
    sampler: Sampler,
    /// The prompt, then each generated token.
    tokens: Vec<u32>,
    /// Where in `tokens` the cache begins (past 0 only after a context shift).
    start: usize,
    /// `tokens` up to here are read as a prefill (chunked, sampled only at the end): the
    /// prompt, or what a context shift re-reads.
    fill_to: usize,
    generated: usize,
}

impl<C> Sequence<C> {
    /// Position in `tokens` of the first token the cache does not hold.
    fn fed<M: Model<Cache = C>>(&self) -> usize {
        self.start + M::cached(&self.cache)
    }
}

impl Engine {
    /// Starts the engine thread over `model`; `end_of_generation` are the tokens that end
    /// a sequence.
    pub fn start<M: Model>(
        model: M,
        end_of_generation: Vec<u32>,
        config: EngineConfig,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(config.max_waiting.max(1));
        let stats = Arc::new(EngineStats {
            capacity: config.max_num_seqs * config.max_model_len,
            ..EngineStats::default()
        });
        let shared = Arc::clone(&stats);
        let cfg = config.clone();
        let slides = model.slides();
        let thread = std::thread::Builder::new()
            .name("volt-llm-engine".into())
            .spawn(move || Engine::run(&model, &end_of_generation, &cfg, &rx, &shared))?;
        Ok(Engine { tx: Some(tx), thread: Some(thread), stats, config, slides })
    }

    /// Whether its sequences may generate past `max_model_len` ([`Model::slides`]).
    pub fn slides(&self) -> bool {
        self.slides
    }

    /// Queues `request`, or says why not without waiting and gives it back.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, request: Request) -> Result<(), (Refused, Request)> {
        let Some(tx) = self.tx.as_ref() else { return Err((Refused::Stopped, request)) };
        self.stats.queued();
        tx.try_send(request).map_err(|e| {
            self.stats.dequeued();
            match e {
                TrySendError::Full(r) => (Refused::Full, r),
                TrySendError::Disconnected(r) => (Refused::Stopped, r),
            }
        })
    }

    /// The engine's counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Its limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    fn run<M: Model>(
        model: &M,
        eog: &[u32],
        config: &EngineConfig,
        rx: &Receiver<Request>,
        stats: &EngineStats,
    ) {
        let mut running: Vec<Sequence<M::Cache>> = Vec::new();
        loop {
            // Admit: wait for work when idle, otherwise take what is there.
            while running.len() < config.max_num_seqs.max(1) {
                let next = if running.is_empty() {
                    match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(r) => Some(r),
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                } else {
                    rx.try_recv().ok()
                };
                let Some(request) = next else { break };
                stats.dequeued();
                // A sliding model reads a long prompt's last context's worth (nanoGPT's crop).
                let start = if model.slides() {
                    request.prompt.len().saturating_sub(config.max_model_len)
                } else {
                    0
                };
                running.push(Sequence {
                    cache: model.new_cache(),
                    sampler: Sampler::new(request.sampling.clone()),
                    tokens: request.prompt.clone(),
                    start,
                    fill_to: request.prompt.len(),
                    generated: 0,
                    request,
                });
            }
            stats.running(running.len(), running.iter().map(|s| M::cached(&s.cache)).sum());
            if running.is_empty() {
                continue;
            }
            // A panic in the model fails the step's requests, never the engine.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Self::step(model, eog, config, &mut running)
            }));
            if stepped.is_err() {
                for mut s in running.drain(..) {
                    (s.request.sink)(Event::Error("the model failed on this step".into()));
                }
            }
            stats.running(running.len(), running.iter().map(|s| M::cached(&s.cache)).sum());
        }
    }

    /// One batched forward over every running sequence, then sampling and clean-up.
    fn step<M: Model>(model: &M, eog: &[u32], config: &EngineConfig, running: &mut Vec<Sequence<M::Cache>>) {
        // A sliding sequence whose next token would pass the context keeps its last half.
        for s in running.iter_mut() {
            if s.fed::<M>() >= s.fill_to && M::cached(&s.cache) >= config.max_model_len {
                s.cache = model.new_cache();
                s.start = s.tokens.len() - (config.max_model_len / 2).max(1);
                s.fill_to = s.tokens.len();
            }
        }
        let mut budget = config.prefill_chunk.max(1);
        // What each sequence reads this step, as a span of its tokens: a chunk of what it
        // prefills (at least one token, so that none starves), or its last token.
        let spans: Vec<(usize, usize)> = running
            .iter()
            .map(|s| {
                let from = s.fed::<M>();
                if from < s.fill_to {
                    let n = (s.fill_to - from).min(budget.max(1));
                    budget = budget.saturating_sub(n);
                    (from, from + n)
                } else {
                    (from, from + 1)
                }
            })
            .collect();
        // Echo scores every prompt position; only the first reading of the prompt has them.
        let scores_prompt =
            |s: &Sequence<M::Cache>| s.request.echo && s.request.logprobs.is_some() && s.start == 0;
        let mut steps: Vec<Step<'_, M::Cache>> = running
            .iter_mut()
            .zip(&spans)
            .map(|(s, &(a, b))| {
                let all_logits = scores_prompt(s) && a < s.request.prompt.len();
                Step { tokens: &s.tokens[a..b], cache: &mut s.cache, all_logits }
            })
            .collect();
        let logits = match model.step(&mut steps) {
            Ok(l) => l,
            Err(e) => {
                // A bad input would have been refused before it reached here: fail them all.
                for mut s in running.drain(..) {
                    (s.request.sink)(Event::Error(e.to_string()));
                }
                return;
            }
        };
        drop(steps);
        let mut keep = Vec::with_capacity(running.len());
        for ((mut s, (a, b)), rows) in running.drain(..).zip(spans).zip(logits) {
            let prefill = a < s.fill_to;
            if prefill && scores_prompt(&s) {
                if let Some(top) = s.request.logprobs {
                    // Row i predicts prompt token a + i + 1.
                    let mut lps: Vec<Option<TokenScore>> = Vec::new();
                    if a == 0 {
                        lps.push(None);
                    }
                    for (i, row) in rows.iter().enumerate().take(b - a) {
                        if let Some(&next) = s.request.prompt.get(a + i + 1) {
                            let (lp, alts) = log_probs(row, &[next], top);
                            lps.push(Some((lp[0], alts)));
                        }
                    }
                    if !(s.request.sink)(Event::PromptLogprobs(lps)) {
                        continue;
                    }
                }
            }
            if b < s.fill_to {
                keep.push(s);
                continue;
            }
            if s.request.max_tokens == 0 {
                // The prompt's scores were all that was asked (`echo`).
                finish(&mut s, Finish::Length);
                continue;
            }
            let Some(row) = rows.last() else { continue };
            let id = s.sampler.sample(row);
            if eog.contains(&id) {
                finish(&mut s, Finish::Stop);
                continue;
            }
            let logprobs = s.request.logprobs.map(|top| {
                let (lp, alts) = log_probs(row, &[id], top);
                (lp[0], alts)
            });
            s.generated += 1;
            s.tokens.push(id);
            if !(s.request.sink)(Event::Token { id, logprobs }) {
                continue;
            }
            let full = !model.slides() && M::cached(&s.cache) + 1 >= config.max_model_len;
            if s.generated >= s.request.max_tokens || full {
                finish(&mut s, Finish::Length);
                continue;
            }
            keep.push(s);
        }
        *running = keep;
    }
}

fn finish<C>(s: &mut Sequence<C>, reason: Finish) {
    (s.request.sink)(Event::Finished {
        reason,
        prompt_tokens: s.request.prompt.len(),
        completion_tokens: s.generated,
    });
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
