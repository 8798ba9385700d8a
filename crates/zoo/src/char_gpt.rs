//! char-gpt: a small GPT over characters (nanoGPT's CPU-sized Shakespeare setup): pre-
//! LayerNorm blocks with causal self-attention and a GELU MLP, the output head tied to
//! the token embedding; sampling with temperature, top-k, top-p and a seed, with a KV cache.
use crate::shakespeare::Vocab;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use volt_train::metrics::LogOptions;
use volt_train::schedule::{SchedulerConfig, SchedulerSpec};
use volt_train::{OptimizerConfig, OptimizerSpec, StepContext, VoltModule};

/// char-gpt's hyperparameters (nanoGPT's `train_shakespeare_char` on CPU).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CharGptConfig {
    /// Transformer blocks.
    pub n_layer: i64,
    /// Attention heads.
    pub n_head: i64,
    /// Embedding width.
    pub n_embd: i64,
    /// Characters of context.
    pub block_size: i64,
    /// Dropout after embeddings, attention and MLP.
    pub dropout: f64,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay.
    pub min_lr: f64,
    /// AdamW betas.
    pub betas: (f64, f64),
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Linear warm-up steps.
    pub warmup_steps: u64,
    /// Step at which the cosine decay reaches `min_lr`.
    pub lr_decay_steps: u64,
}

impl Default for CharGptConfig {
    fn default() -> Self {
        CharGptConfig {
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            dropout: 0.0,
            lr: 1e-3,
            min_lr: 1e-4,
            betas: (0.9, 0.99),
            weight_decay: 0.1,
            warmup_steps: 100,
            lr_decay_steps: 2000,
        }
    }
}

struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc: nn::Linear,
    fc_proj: nn::Linear,
}

/// The model, its vocabulary and its variables.
pub struct CharGpt {
    vs: nn::VarStore,
    tok: nn::Embedding,
    pos: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    config: CharGptConfig,
    vocab: Vocab,
}

/// Keys and values of every layer for the positions seen so far (`[1, heads, t, hs]`).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How to pick each next character.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Characters to generate at most.
    pub max_tokens: usize,
    /// Softmax temperature; 0 picks the most likely character.
    pub temperature: f64,
    /// Keep only the k most likely characters.
    pub top_k: Option<usize>,
    /// Keep the smallest set of characters whose probability reaches p.
    pub top_p: Option<f64>,
    /// Seed of the draws.
    pub seed: u64,
    /// Subtracted once from the logit of every character generated so far (OpenAI's
    /// `presence_penalty`).
    pub presence_penalty: f64,
    /// Subtracted from each character's logit once per time it was generated so far
    /// (OpenAI's `frequency_penalty`).
    pub frequency_penalty: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            max_tokens: 200,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

fn init_normal() -> nn::Init {
    nn::Init::Randn { mean: 0.0, stdev: 0.02 }
}

impl CharGpt {
    /// A freshly initialised model (nanoGPT's init: N(0, 0.02), output projections
    /// scaled by 1/sqrt(2·n_layer), zero biases) for `vocab`, on `device`.
    pub fn new(config: CharGptConfig, vocab: Vocab, device: Device) -> Result<CharGpt, String> {
        if config.n_embd % config.n_head != 0 || config.n_layer < 1 || config.block_size < 1 {
            return Err("n_embd must be a multiple of n_head; n_layer and block_size at least 1".into());
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = config.n_embd;
        let emb = nn::EmbeddingConfig { ws_init: init_normal(), ..Default::default() };
        let tok = nn::embedding(&root / "tok", vocab.len() as i64, c, emb);
        let pos = nn::embedding(&root / "pos", config.block_size, c, emb);
        let scaled = nn::Init::Randn { mean: 0.0, stdev: 0.02 / (2.0 * config.n_layer as f64).sqrt() };
        let linear = |p: nn::Path, i: i64, o: i64, init: nn::Init| {
            nn::linear(
                p,
                i,
                o,
                nn::LinearConfig { ws_init: init, bs_init: Some(nn::Init::Const(0.0)), bias: true },
            )
        };
        let blocks = (0..config.n_layer)
            .map(|i| {
                let b = &root / "blocks" / i;
                Block {
                    ln1: nn::layer_norm(&b / "ln1", vec![c], Default::default()),
                    qkv: linear(&b / "qkv", c, 3 * c, init_normal()),
                    proj: linear(&b / "proj", c, c, scaled),
                    ln2: nn::layer_norm(&b / "ln2", vec![c], Default::default()),
                    fc: linear(&b / "fc", c, 4 * c, init_normal()),
                    fc_proj: linear(&b / "fc_proj", 4 * c, c, scaled),
                }
            })
            .collect();
        let ln_f = nn::layer_norm(&root / "ln_f", vec![c], Default::default());
        Ok(CharGpt { vs, tok, pos, blocks, ln_f, config, vocab })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &CharGptConfig {
        &self.config
    }

    /// The character vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    fn dropout(&self, x: Tensor, train: bool) -> Tensor {
        if train && self.config.dropout > 0.0 {
            x.dropout(self.config.dropout, true)
        } else {
            x
        }
    }

    /// Logits `[B, T, vocab]` for ids `[B, T]` (T ≤ block_size), every position at once.
    pub fn forward_t(&self, idx: &Tensor, train: bool) -> Tensor {
        let t = idx.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, idx.device()));
        let mut x = self.dropout(self.tok.forward(idx) + self.pos.forward(&positions), train);
        for b in &self.blocks {
            let (q, k, v) = self.heads(b, &b.ln1.forward(&x));
            let a = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, true, None, false);
            x = &x + self.dropout(self.merge(b, a), train);
            x = &x + self.dropout(self.mlp(b, &x), train);
        }
        self.head(&x)
    }

    fn heads(&self, b: &Block, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (bsz, t) = (x.size()[0], x.size()[1]);
        let split = |y: &Tensor| y.view([bsz, t, self.config.n_head, -1]).transpose(1, 2);
        let qkv = b.qkv.forward(x).chunk(3, -1);
        (split(&qkv[0]), split(&qkv[1]), split(&qkv[2]))
    }

    fn merge(&self, b: &Block, a: Tensor) -> Tensor {
        let (bsz, t) = (a.size()[0], a.size()[2]);
        b.proj.forward(&a.transpose(1, 2).contiguous().view([bsz, t, self.config.n_embd]))
    }

    fn mlp(&self, b: &Block, x: &Tensor) -> Tensor {
        b.fc_proj.forward(&b.fc.forward(&b.ln2.forward(x)).gelu("none"))
    }

    /// The output head, tied to the token embedding.
    fn head(&self, x: &Tensor) -> Tensor {
        self.ln_f.forward(x).linear::<Tensor>(&self.tok.ws, None)
    }

    /// Logits `[vocab]` of the position after `new` (`[1, n]`), feeding only the new
    /// positions through the network and keeping their keys and values in `cache`.
    /// Several positions at once only into an empty cache (the prompt).
    pub fn forward_cached(&self, new: &Tensor, cache: &mut KvCache) -> Tensor {
        let n = new.size()[1];
        let positions = Tensor::arange_start(cache.len, cache.len + n, (Kind::Int64, new.device()));
        let mut x = self.tok.forward(new) + self.pos.forward(&positions);
        for (i, b) in self.blocks.iter().enumerate() {
            let (q, k, v) = self.heads(b, &b.ln1.forward(&x));
            let (k, v) = match cache.layers.get(i) {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2), Tensor::cat(&[pv, &v], 2)),
                None => (k, v),
            };
            // A prompt attends causally to itself; one new position attends to all.
            let causal = cache.len == 0 && n > 1;
            let a =
                Tensor::scaled_dot_product_attention(&q, &k, &v, None::<&Tensor>, 0.0, causal, None, false);
            if i < cache.layers.len() {
                cache.layers[i] = (k, v);
            } else {
                cache.layers.push((k, v));
            }
            x = &x + self.merge(b, a);
            x = &x + self.mlp(b, &x);
        }
        cache.len += n;
        self.head(&x.select(1, n - 1)).squeeze()
    }

    /// Generates up to `s.max_tokens` characters after `prompt` (an empty prompt starts
    /// from a newline), calling `emit` with each as soon as it exists; `emit` returning
    /// false stops generation. See [`Generation`] for the context window and the cache.
    pub fn generate(
        &self,
        prompt: &str,
        s: &Sampling,
        cached: bool,
        mut emit: impl FnMut(char) -> bool,
    ) -> Result<String, String> {
        let mut g = Generation::new(self, prompt, s.clone())?;
        let mut out = String::new();
        while let Some(c) = g.step(self, cached)? {
            out.push(c);
            if !emit(c) {
                break;
            }
        }
        Ok(out)
    }
}

/// One generation in progress, advanced a character at a time (so that a server can
/// interleave several). The context window follows nanoGPT's crop to the last
/// block_size characters, moved half a block at a time so that, with the KV cache, each
/// character costs one single-position step (plus one prompt pass per half block).
pub struct Generation {
    ids: Vec<i64>,
    start: usize,
    cache: KvCache,
    rng: ChaCha8Rng,
    produced: usize,
    sampling: Sampling,
    prompt_tokens: usize,
    /// How often each character has been generated (not the prompt's), for the penalties.
    counts: Vec<u32>,
}

impl Generation {
    /// Starts after `prompt`; characters outside the vocabulary are an error naming them.
    pub fn new(model: &CharGpt, prompt: &str, sampling: Sampling) -> Result<Generation, String> {
        let ids = model.vocab.encode(if prompt.is_empty() { "\n" } else { prompt })?;
        let start = ids.len().saturating_sub(model.config.block_size as usize);
        let rng = ChaCha8Rng::seed_from_u64(sampling.seed);
        let prompt_tokens = ids.len();
        let counts = vec![0; model.vocab.len()];
        let cache = KvCache::default();
        Ok(Generation { ids, start, cache, rng, produced: 0, sampling, prompt_tokens, counts })
    }

    /// Characters of the prompt.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// The next character, or `None` once `max_tokens` are out.
    pub fn step(&mut self, model: &CharGpt, cached: bool) -> Result<Option<char>, String> {
        if self.produced >= self.sampling.max_tokens {
            return Ok(None);
        }
        let block = model.config.block_size as usize;
        if self.ids.len() - self.start > block {
            self.start = self.ids.len() - block / 2;
            self.cache = KvCache::default();
        }
        let device = model.vs.device();
        let logits = tch::no_grad(|| {
            if cached {
                let fed = self.start + self.cache.len() as usize;
                let new = Tensor::from_slice(&self.ids[fed..]).view([1, -1]).to_device(device);
                model.forward_cached(&new, &mut self.cache)
            } else {
                let window = Tensor::from_slice(&self.ids[self.start..]).view([1, -1]).to_device(device);
                model.forward_t(&window, false).select(1, -1).squeeze()
            }
        });
        let mut logits = Vec::<f32>::try_from(logits.to_kind(Kind::Float).to_device(Device::Cpu))
            .map_err(|e| e.to_string())?;
        let s = &self.sampling;
        apply_penalties(&mut logits, &self.counts, s.presence_penalty, s.frequency_penalty);
        let next = sample(&logits, &self.sampling, &mut self.rng) as i64;
        if let Some(c) = self.counts.get_mut(next as usize) {
            *c += 1;
        }
        self.ids.push(next);
        self.produced += 1;
        Ok(Some(model.vocab.decode(&[next]).chars().next().unwrap_or('\n')))
    }
}

/// OpenAI's presence and frequency penalties: `logit[j] -= count[j] * frequency +
/// (count[j] > 0) * presence`, where `count[j]` is how often `j` was generated so far.
pub fn apply_penalties(logits: &mut [f32], counts: &[u32], presence: f64, frequency: f64) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    for (logit, &count) in logits.iter_mut().zip(counts) {
        if count > 0 {
            *logit = (f64::from(*logit) - f64::from(count) * frequency - presence) as f32;
        }
    }
}

/// Picks an index from `logits` by temperature, top-k and top-p, with `rng`.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut ChaCha8Rng) -> usize {
    let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
    if s.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    let top = f64::from(logits[order[0]]);
    let mut probs: Vec<f64> =
        order.iter().map(|&i| ((f64::from(logits[i]) - top) / s.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p {
        let mut acc = 0.0;
        let keep = probs.iter().take_while(|&&q| {
            let before = acc;
            acc += q;
            before < p
        });
        let n = keep.count().max(1);
        probs.truncate(n);
        order.truncate(n);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (i, q) in order.iter().zip(&probs) {
        if u < *q {
            return *i;
        }
        u -= q;
    }
    order[order.len() - 1]
}

impl VoltModule for CharGpt {
    type Batch = (Tensor, Tensor);
    type Prediction = String;

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn training_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        let (x, y) = batch;
        let logits = self.forward_t(x, true);
        let loss = logits.view([-1, self.vocab.len() as i64]).cross_entropy_for_logits(&y.view([-1]));
        ctx.log_with("train_loss", &loss, LogOptions::prog_bar());
        Ok(loss)
    }

    fn validation_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        let (x, y) = batch;
        let logits = self.forward_t(x, false);
        let loss = logits.view([-1, self.vocab.len() as i64]).cross_entropy_for_logits(&y.view([-1]));
        ctx.log_with("val_loss", &loss, LogOptions { sync_dist: true, ..LogOptions::prog_bar() });
        Ok(())
    }

    fn configure_optimizers(&self) -> OptimizerConfig {
        let c = &self.config;
        OptimizerConfig {
            optimizer: OptimizerSpec::AdamW {
                lr: c.lr,
                betas: c.betas,
                eps: 1e-8,
                weight_decay: c.weight_decay,
            },
            lr_scheduler: Some(SchedulerConfig::every_step(SchedulerSpec::WarmupCosine {
                warmup_steps: c.warmup_steps,
                max_steps: c.lr_decay_steps,
                min_lr: c.min_lr,
            })),
        }
    }

    fn hparams(&self) -> serde_json::Value {
        serde_json::json!({"config": self.config, "vocab": self.vocab})
    }
}
