//! The Llama architecture in tch, reading a GGUF file's tensors: RMSNorm, rotary position
//! embeddings, grouped-query attention, a SwiGLU feed-forward, and an output head tied
//! to the embeddings when the file has no `output.weight` (SmolLM2's case).
//!
//! llama.cpp's converter stores each head's Q and K rows permuted so that the two halves
//! a rotation pairs are adjacent rows (GGUF row 2j+t is Hugging Face's row t·d/2 + j); so
//! RoPE here rotates adjacent pairs (llama.cpp's "normal" RoPE) on the weights as stored,
//! which gives the same attention as transformers' `rotate_half` on the unpermuted ones.
//! This is the float path: every tensor dequantized to f32 at load. The tensors come from
//! a GGUF file or a Hugging Face folder ([`crate::weights`]), both in GGUF's layout.
use crate::error::{LlmError, Result};
use crate::lora::Adapter;
use crate::model::{check_step, chunk_masks, row_spans, split_logits, wanted_rows, Model, Step};
use crate::weights::{checked, GgufWeights, Weights};
use tch::{Device, Kind, Tensor};
use volt_formats::gguf::{dequantize, Gguf};

/// The numbers a Llama model is made of, from the file's `llama.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (fewer than query heads: grouped-query attention).
    pub n_kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
    /// Inner width of the feed-forward block.
    pub ffn_dim: usize,
    /// Base of the rotary frequencies.
    pub rope_base: f64,
    /// RMSNorm's epsilon.
    pub eps: f64,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Longest sequence the model was trained for.
    pub context_len: usize,
}

impl LlamaConfig {
    /// The configuration in `g`'s metadata, or an error naming what is missing.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g.get("general.architecture")?.as_str().unwrap_or_default().to_owned();
        if arch != "llama" {
            return Err(LlmError::model(format!(
                "general.architecture = \"{arch}\": volt serves the llama architecture only"
            )));
        }
        let n = |key: &str| -> Result<usize> {
            let k = format!("llama.{key}");
            g.get(&k)?
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| LlmError::model(format!("metadata {k} is not a number")))
        };
        let f = |key: &str, default: f64| -> f64 {
            g.metadata.get(&format!("llama.{key}")).and_then(|v| v.as_f64()).unwrap_or(default)
        };
        let dim = n("embedding_length")?;
        let n_heads = n("attention.head_count")?;
        let n_kv_heads = n("attention.head_count_kv").unwrap_or(n_heads);
        check_heads(dim, n_heads, n_kv_heads)?;
        let vocab = g.get("tokenizer.ggml.tokens")?.as_array().map_or(0, <[_]>::len);
        Ok(LlamaConfig {
            n_layers: n("block_count")?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads,
            ffn_dim: n("feed_forward_length")?,
            rope_base: f("rope.freq_base", 10_000.0),
            eps: f("attention.layer_norm_rms_epsilon", 1e-5),
            vocab,
            context_len: n("context_length")?,
        })
    }
}

/// A LoRA pair: A `[r, in]`, B `[out, r]`.
struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

/// A projection's weight `[out, in]`, and its adapter when it has one.
struct Proj {
    w: Tensor,
    lora: Option<Lora>,
}

impl Proj {
    /// `x Wᵀ`, plus `scale · (x Aᵀ) Bᵀ` with an adapter.
    fn apply(&self, x: &Tensor) -> Tensor {
        let y = x.matmul(&self.w.tr());
        match &self.lora {
            Some(l) => y + x.matmul(&l.a.tr()).matmul(&l.b.tr()) * l.scale,
            None => y,
        }
    }
}

/// Refuses head counts that do not split `dim` (queries) and the query heads (keys and values).
pub fn check_heads(dim: usize, n_heads: usize, n_kv_heads: usize) -> Result<()> {
    if n_heads == 0 || n_kv_heads == 0 || !dim.is_multiple_of(n_heads) || !n_heads.is_multiple_of(n_kv_heads)
    {
        return Err(LlmError::model(format!(
            "{n_heads} heads ({n_kv_heads} for keys and values) do not divide a width of {dim}"
        )));
    }
    Ok(())
}

/// One linear layer of a block: GGUF's name, transformers', and its weight's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `blk.N.attn_q`.
    pub gguf: String,
    /// `model.layers.N.self_attn.q_proj`.
    pub hf: String,
    /// Output features.
    pub rows: i64,
    /// Input features.
    pub cols: i64,
    /// Heads whose rows GGUF interleaves (queries and keys), else 0.
    pub rotated_heads: usize,
}

impl LlamaConfig {
    /// Every linear layer of every block (the head aside), in block order.
    pub fn linear_layers(&self) -> Vec<Linear> {
        let (d, kv, ff) = (self.dim as i64, (self.n_kv_heads * self.head_dim) as i64, self.ffn_dim as i64);
        let parts = [
            ("attn_q", d, d),
            ("attn_k", kv, d),
            ("attn_v", kv, d),
            ("attn_output", d, d),
            ("ffn_gate", ff, d),
            ("ffn_up", ff, d),
            ("ffn_down", d, ff),
        ];
        (0..self.n_layers)
            .flat_map(|i| {
                parts.iter().map(move |&(part, rows, cols)| {
                    let gguf = format!("blk.{i}.{part}");
                    let hf = crate::weights::hf_layer_name(&gguf).unwrap_or_default();
                    Linear { gguf, hf, rows, cols, rotated_heads: self.rotated_heads(part) }
                })
            })
            .collect()
    }

    /// Heads of a block part (`attn_q`, `attn_k`) whose rows RoPE rotates, which GGUF
    /// stores interleaved; 0 for every other part.
    pub fn rotated_heads(&self, part: &str) -> usize {
        match part {
            "attn_q" => self.n_heads,
            "attn_k" => self.n_kv_heads,
            _ => 0,
        }
    }
}

struct Layer {
    attn_norm: Tensor,
    wq: Proj,
    wk: Proj,
    wv: Proj,
    wo: Proj,
    ffn_norm: Tensor,
    w_gate: Proj,
    w_up: Proj,
    w_down: Proj,
}

/// The keys and values of one sequence so far, per layer (`[kv_heads, len, head_dim]`).
pub struct KvCache {
    k: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    len: usize,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Llama model on a device, every weight in f32.
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    head: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    /// Rotary angles' cosines and sines, `[context_len, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    /// The model in a GGUF file's `bytes` (header `g`), dequantized onto `device`.
    pub fn from_gguf(bytes: &[u8], g: &Gguf, device: Device) -> Result<Self> {
        Self::from_weights(&GgufWeights { bytes, header: g }, LlamaConfig::from_gguf(g)?, None, device)
    }

    /// The model of `config` whose tensors `w` holds, dequantized onto `device`, with
    /// `adapter`'s LoRA pairs beside the projections they adapt.
    pub fn from_weights(
        w: &dyn Weights,
        config: LlamaConfig,
        adapter: Option<&Adapter>,
        device: Device,
    ) -> Result<Self> {
        let tensor = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let raw = checked(w, name, shape)?;
            Ok(Tensor::from_slice(&dequantize(raw.kind, &raw.data)).view(shape).to_device(device))
        };
        let (d, kv, ff) =
            (config.dim as i64, (config.n_kv_heads * config.head_dim) as i64, config.ffn_dim as i64);
        let embed = tensor("token_embd.weight", &[config.vocab as i64, d])?;
        let head = match w.tensor("output.weight")? {
            Some(_) => tensor("output.weight", &[config.vocab as i64, d])?,
            None => embed.shallow_clone(),
        };
        let mut pairs = adapter.map(|a| a.pairs(&config)).transpose()?.unwrap_or_default();
        let mut lora = |name: String, rows: i64, cols: i64| {
            pairs.remove(&name).map(|p| Lora {
                a: Tensor::from_slice(&p.a).view([p.rank as i64, cols]).to_device(device),
                b: Tensor::from_slice(&p.b).view([rows, p.rank as i64]).to_device(device),
                scale: f64::from(p.scale),
            })
        };
        let layers = (0..config.n_layers)
            .map(|i| {
                let t = |part: &str, shape: &[i64]| tensor(&format!("blk.{i}.{part}.weight"), shape);
                let mut p = |part: &str, rows: i64, cols: i64| -> Result<Proj> {
                    let w = tensor(&format!("blk.{i}.{part}.weight"), &[rows, cols])?;
                    Ok(Proj { w, lora: lora(format!("blk.{i}.{part}"), rows, cols) })
                };
                Ok(Layer {
                    attn_norm: t("attn_norm", &[d])?,
                    wq: p("attn_q", d, d)?,
                    wk: p("attn_k", kv, d)?,
                    wv: p("attn_v", kv, d)?,
                    wo: p("attn_output", d, d)?,
                    ffn_norm: t("ffn_norm", &[d])?,
                    w_gate: p("ffn_gate", ff, d)?,
                    w_up: p("ffn_up", ff, d)?,
                    w_down: p("ffn_down", d, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(left) = pairs.keys().next() {
            return Err(LlmError::model(format!("adapter layer {left} is not a layer of this model")));
        }
        let norm = tensor("output_norm.weight", &[d])?;
        let half = (config.head_dim / 2) as i64;
        let options = (Kind::Float, device);
        let inv_freq = (Tensor::arange(half, (Kind::Double, device))
            * (-2.0 / config.head_dim as f64)
            * config.rope_base.ln())
        .exp();
        let angles = Tensor::arange(config.context_len as i64, (Kind::Double, device)).outer(&inv_freq);
        let (cos, sin) = (angles.cos().to_kind(options.0), angles.sin().to_kind(options.0));
        Ok(Llama { config, embed, head, layers, norm, cos, sin })
    }

    /// The model's numbers.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// An empty cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        let empty = || (0..self.config.n_layers).map(|_| None).collect();
        KvCache { k: empty(), v: empty(), len: 0 }
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Tensor {
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        x * (variance + self.config.eps).rsqrt() * weight
    }

    /// Rotates adjacent pairs of `x` (`[rows, heads, head_dim]`) by the angles of each
    /// row's position (`positions`, `[rows]`).
    fn rope(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (n, heads, hd) = x.size3().unwrap_or((0, 0, 0));
        let pairs = x.view([n, heads, hd / 2, 2]);
        let (x0, x1) = (pairs.select(3, 0), pairs.select(3, 1));
        let cos = self.cos.index_select(0, positions).unsqueeze(1);
        let sin = self.sin.index_select(0, positions).unsqueeze(1);
        Tensor::stack(&[&x0 * &cos - &x1 * &sin, &x0 * &sin + &x1 * &cos], 3).view([n, heads, hd])
    }

    /// The logits (`[tokens.len(), vocab]`) of `tokens`, which follow what `cache` holds;
    /// the cache grows by them.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let mut out = self.step_tensors(&mut [Step { tokens, cache, all_logits: true }])?;
        Ok(out.remove(0))
    }

    /// One forward pass over several sequences at once, each `Step` giving the tokens
    /// that follow what its cache holds (a prompt chunk, or the one token to decode).
    /// The matrix products run once over every new token of every sequence, so a decode
    /// step reads the weights once however many sequences it serves; attention runs per
    /// sequence over its own cache. Returns each sequence's logits: every new position's
    /// when it asks for `all_logits`, else its last one's (`[1, vocab]`).
    pub fn step_tensors(&self, seqs: &mut [Step<'_, KvCache>]) -> Result<Vec<Tensor>> {
        let c = &self.config;
        for s in seqs.iter() {
            check_step(s.tokens, s.cache.len, c.context_len, c.vocab)?;
        }
        let device = self.embed.device();
        let (heads, kv_heads, hd) = (c.n_heads as i64, c.n_kv_heads as i64, c.head_dim as i64);
        let ids: Vec<i64> = seqs.iter().flat_map(|s| s.tokens.iter().map(|&t| i64::from(t))).collect();
        let positions: Vec<i64> =
            seqs.iter().flat_map(|s| (s.cache.len..s.cache.len + s.tokens.len()).map(|p| p as i64)).collect();
        let rows = ids.len() as i64;
        let positions = Tensor::from_slice(&positions).to_device(device);
        let mut x = self.embed.index_select(0, &Tensor::from_slice(&ids).to_device(device));
        let spans = row_spans(seqs);
        let masks = chunk_masks(seqs, |c: &KvCache| c.len, device);
        let groups = heads / kv_heads;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.attn_norm);
            let q = self.rope(&layer.wq.apply(&h).view([rows, heads, hd]), &positions);
            let k = self.rope(&layer.wk.apply(&h).view([rows, kv_heads, hd]), &positions);
            let v = layer.wv.apply(&h).view([rows, kv_heads, hd]);
            let mut outputs = Vec::with_capacity(seqs.len());
            for ((s, &(at, n)), mask) in seqs.iter_mut().zip(&spans).zip(&masks) {
                let k_new = k.narrow(0, at, n).transpose(0, 1);
                let v_new = v.narrow(0, at, n).transpose(0, 1);
                let k_all = match s.cache.k[l].take() {
                    Some(old) => Tensor::cat(&[old, k_new], 1),
                    None => k_new,
                };
                let v_all = match s.cache.v[l].take() {
                    Some(old) => Tensor::cat(&[old, v_new], 1),
                    None => v_new,
                };
                let attn = Tensor::scaled_dot_product_attention(
                    &q.narrow(0, at, n).transpose(0, 1),
                    &k_all.repeat_interleave_self_int(groups, 0, None),
                    &v_all.repeat_interleave_self_int(groups, 0, None),
                    mask.as_ref(),
                    0.0,
                    false,
                    None,
                    false,
                );
                s.cache.k[l] = Some(k_all);
                s.cache.v[l] = Some(v_all);
                outputs.push(attn.transpose(0, 1).reshape([n, heads * hd]));
            }
            x += layer.wo.apply(&Tensor::cat(&outputs, 0));
            let h = self.rms_norm(&x, &layer.ffn_norm);
            let gate = layer.w_gate.apply(&h).silu();
            x += layer.w_down.apply(&(gate * layer.w_up.apply(&h)));
        }
        let wanted = wanted_rows(seqs, &spans);
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        let picked = x.index_select(0, &Tensor::from_slice(&wanted).to_device(device));
        let logits = self.rms_norm(&picked, &self.norm).matmul(&self.head.tr());
        Ok(split_logits(seqs, &logits))
    }
}

impl Model for Llama {
    type Cache = KvCache;
    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }
    fn cached(cache: &KvCache) -> usize {
        cache.len
    }
    fn context_len(&self) -> usize {
        self.config.context_len
    }
    fn bytes_per_position(&self) -> usize {
        self.config.n_layers * 2 * self.config.n_kv_heads * self.config.head_dim * 4
    }
    fn step(&self, seqs: &mut [Step<'_, KvCache>]) -> Result<Vec<Vec<Vec<f32>>>> {
        self.step_tensors(seqs)?
            .into_iter()
            .map(|t| {
                Vec::<Vec<f32>>::try_from(t.to_device(Device::Cpu))
                    .map_err(|e| LlmError::model(format!("logits: {e}")))
            })
            .collect()
    }
}
