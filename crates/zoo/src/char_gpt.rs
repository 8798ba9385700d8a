//! char-gpt: a small GPT over characters (nanoGPT's CPU-sized Shakespeare setup): pre-
//! LayerNorm blocks with causal self-attention and a GELU MLP, the output head tied to
//! the token embedding. Served by volt-llm's engine ([`volt_llm::Model`]): batched
//! steps over KV caches, sliding past the block as nanoGPT's generation crops to it.
use crate::shakespeare::Vocab;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use volt_llm::model::{check_step, chunk_masks, row_spans, split_logits, wanted_rows, Step};
use volt_llm::LlmError;
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

    /// One forward pass over several sequences, each `Step` giving the characters that
    /// follow what its cache holds: the linear layers run once over every new position
    /// of every sequence, attention per sequence over its own cache. Each sequence's
    /// logits (`[positions, vocab]`): every new position's with `all_logits`, else its
    /// last one's.
    pub fn step_tensors(&self, seqs: &mut [Step<'_, KvCache>]) -> volt_llm::Result<Vec<Tensor>> {
        let block = self.config.block_size as usize;
        for s in seqs.iter() {
            check_step(s.tokens, s.cache.len as usize, block, self.vocab.len())?;
        }
        let device = self.vs.device();
        let ids: Vec<i64> = seqs.iter().flat_map(|s| s.tokens.iter().map(|&t| i64::from(t))).collect();
        let positions: Vec<i64> =
            seqs.iter().flat_map(|s| s.cache.len..s.cache.len + s.tokens.len() as i64).collect();
        let as_row = |v: &[i64]| Tensor::from_slice(v).view([1, -1]).to_device(device);
        let mut x = self.tok.forward(&as_row(&ids)) + self.pos.forward(&as_row(&positions));
        let spans = row_spans(seqs);
        let masks = chunk_masks(seqs, |c: &KvCache| c.len as usize, device);
        for (l, b) in self.blocks.iter().enumerate() {
            let (q, k, v) = self.heads(b, &b.ln1.forward(&x));
            let mut outputs = Vec::with_capacity(seqs.len());
            for ((s, &(at, n)), mask) in seqs.iter_mut().zip(&spans).zip(&masks) {
                let (k_new, v_new) = (k.narrow(2, at, n), v.narrow(2, at, n));
                let (k_all, v_all) = match s.cache.layers.get(l) {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k_new], 2), Tensor::cat(&[pv, &v_new], 2)),
                    None => (k_new, v_new),
                };
                outputs.push(Tensor::scaled_dot_product_attention(
                    &q.narrow(2, at, n),
                    &k_all,
                    &v_all,
                    mask.as_ref(),
                    0.0,
                    false,
                    None,
                    false,
                ));
                if l < s.cache.layers.len() {
                    s.cache.layers[l] = (k_all, v_all);
                } else {
                    s.cache.layers.push((k_all, v_all));
                }
            }
            x = &x + self.merge(b, Tensor::cat(&outputs, 2));
            x = &x + self.mlp(b, &x);
        }
        let wanted = wanted_rows(seqs, &spans);
        for (s, &(_, n)) in seqs.iter_mut().zip(&spans) {
            s.cache.len += n;
        }
        let rows = Tensor::from_slice(&wanted).to_device(device);
        Ok(split_logits(seqs, &self.head(&x.index_select(1, &rows)).squeeze_dim(0)))
    }
}

impl volt_llm::Model for CharGpt {
    type Cache = KvCache;
    fn new_cache(&self) -> KvCache {
        KvCache::default()
    }
    fn cached(cache: &KvCache) -> usize {
        cache.len as usize
    }
    fn context_len(&self) -> usize {
        self.config.block_size as usize
    }
    fn bytes_per_position(&self) -> usize {
        let c = &self.config;
        (c.n_layer * 2 * c.n_embd) as usize * self.vs.kind().elt_size_in_bytes()
    }
    fn step(&self, seqs: &mut [Step<'_, KvCache>]) -> volt_llm::Result<Vec<Vec<Vec<f32>>>> {
        tch::no_grad(|| self.step_tensors(seqs))?
            .into_iter()
            .map(|t| {
                Vec::<Vec<f32>>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu))
                    .map_err(|e| LlmError::Model(format!("char-gpt logits: {e}")))
            })
            .collect()
    }
    /// nanoGPT generates past its block by cropping to the last `block_size` characters.
    fn slides(&self) -> bool {
        true
    }
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
            optimizer: OptimizerSpec::adamw_with(c.lr, c.betas, c.weight_decay),
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
