//! Llama on the CPU with its weights kept quantized, as the GGUF file stores them: the
//! serving path. The matrix products are [`crate::kernels`]; the rest (RMSNorm, RoPE,
//! attention over each sequence's own cache, SwiGLU) is written here over plain slices
//! rather than libtorch, because every operation must give a row the same bits whatever
//! else shares its step: the engine batches sequences and cuts prompts into chunks as
//! load dictates, and that must not change an answer (libtorch picks kernels and
//! reduction orders by shape). The arithmetic is the float path's ([`crate::Llama`]),
//! checked against it in tests.
use crate::error::{LlmError, Result};
use crate::kernels::QMatrix;
use crate::llama::LlamaConfig;
use crate::lora::{Adapter, LoraPair};
use crate::model::{check_step, Model, Step};
use crate::weights::{checked, GgufWeights, Weights};
use rayon::prelude::*;
use std::sync::Arc;
use volt_formats::gguf::{dequantize, Gguf};

/// One block's weights; Q, K and V stacked into one matrix, and gate and up into
/// another, so that each input is read by one product (when their layouts agree).
struct Layer {
    /// LoRA pairs of the projections, in [`PARTS`]'s order.
    lora: Vec<Option<Lora>>,
    attn_norm: Vec<f32>,
    qkv: Products,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    gate_up: Products,
    w_down: QMatrix,
}

/// A block's adaptable projections, in the order [`Layer::lora`] holds their pairs.
const PARTS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// A LoRA pair on the kernels: B's rank padded with zero columns to whole blocks.
struct Lora {
    a: QMatrix,
    b: QMatrix,
    rank: usize,
    padded: usize,
    scale: f32,
}

impl Lora {
    fn new(p: LoraPair, layer: &str) -> Result<Self> {
        let cols = p.a.len() / p.rank;
        let rows = p.b.len() / p.rank;
        let padded = p.rank.div_ceil(32) * 32;
        let b: Vec<f32> =
            p.b.chunks_exact(p.rank)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, padded - p.rank)))
                .collect();
        let bad =
            || LlmError::model(format!("adapter layer {layer}: a width of {cols} is not whole blocks of 32"));
        Ok(Lora {
            a: QMatrix::from_f32(&p.a, p.rank, cols).ok_or_else(bad)?,
            b: QMatrix::from_f32(&b, rows, padded).ok_or_else(bad)?,
            rank: p.rank,
            padded,
            scale: p.scale,
        })
    }

    /// Adds `scale · B(Ax)` of `x` (`[n, in]`) to `y` (`[n, out]`).
    fn add(&self, x: &[f32], n: usize, pool: &rayon::ThreadPool, y: &mut [f32]) {
        let ax = self.a.matmul(x, n, pool);
        let mut wide = vec![0f32; n * self.padded];
        for (w, r) in wide.chunks_exact_mut(self.padded).zip(ax.chunks_exact(self.rank)) {
            w[..self.rank].copy_from_slice(r);
        }
        let bax = self.b.matmul(&wide, n, pool);
        y.iter_mut().zip(&bax).for_each(|(o, d)| *o += self.scale * d);
    }
}

/// `y += ` the pair's update, when the projection has one.
fn adapt(lora: &Option<Lora>, x: &[f32], n: usize, pool: &rayon::ThreadPool, y: &mut [f32]) {
    if let Some(l) = lora {
        l.add(x, n, pool, y);
    }
}

/// Matrices that multiply the same input: stacked when they can be, else apart.
enum Products {
    Stacked(QMatrix, Vec<usize>),
    Apart(Vec<QMatrix>),
}

impl Products {
    fn bytes(&self) -> usize {
        match self {
            Products::Stacked(m, _) => m.bytes(),
            Products::Apart(parts) => parts.iter().map(QMatrix::bytes).sum(),
        }
    }

    fn new(parts: Vec<QMatrix>) -> Self {
        let widths: Vec<usize> = parts.iter().map(|m| m.rows).collect();
        if parts.windows(2).all(|w| w[0].same_layout(&w[1])) {
            if let Some(m) = QMatrix::stack(parts) {
                return Products::Stacked(m, widths);
            }
            // stack() took them: only an empty list gets here, and it has nothing apart.
            return Products::Apart(Vec::new());
        }
        Products::Apart(parts)
    }

    /// Each matrix's product with `x` (`[n, cols]`), in order.
    fn apply(&self, x: &[f32], n: usize, pool: &rayon::ThreadPool) -> Vec<Vec<f32>> {
        match self {
            Products::Apart(parts) => parts.iter().map(|m| m.matmul(x, n, pool)).collect(),
            Products::Stacked(m, widths) => {
                let y = m.matmul(x, n, pool);
                let mut out: Vec<Vec<f32>> = widths.iter().map(|w| Vec::with_capacity(w * n)).collect();
                for row in y.chunks_exact(m.rows) {
                    let mut at = 0;
                    for (o, w) in out.iter_mut().zip(widths) {
                        o.extend_from_slice(&row[at..at + w]);
                        at += w;
                    }
                }
                out
            }
        }
    }
}

/// One sequence's keys and values, per layer `[positions, kv_heads · head_dim]`.
pub struct QuantCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

/// A Llama model whose matrices stay quantized, computed on the CPU by `threads` threads.
pub struct QuantLlama {
    config: LlamaConfig,
    embed: Arc<QMatrix>,
    head: Arc<QMatrix>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// Rotary cosines and sines, `[context_len, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    pool: rayon::ThreadPool,
}

impl QuantLlama {
    /// The model in a GGUF file's `bytes` (header `g`), its matrices as stored.
    pub fn from_gguf(bytes: &[u8], g: &Gguf, threads: usize) -> Result<Self> {
        Self::from_weights(&GgufWeights { bytes, header: g }, LlamaConfig::from_gguf(g)?, None, threads)
    }

    /// The model of `config` whose tensors `w` holds, its matrices as stored, with
    /// `adapter`'s LoRA pairs beside the projections they adapt.
    pub fn from_weights(
        w: &dyn Weights,
        config: LlamaConfig,
        adapter: Option<&Adapter>,
        threads: usize,
    ) -> Result<Self> {
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let raw = checked(w, name, &[rows as i64, cols as i64])?;
            QMatrix::from_gguf(raw.kind, &raw.data, rows, cols).ok_or_else(|| {
                LlmError::model(format!(
                    "tensor {name} is {}, which volt's CPU kernels do not read",
                    raw.kind.name()
                ))
            })
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let raw = checked(w, name, &[len as i64])?;
            Ok(dequantize(raw.kind, &raw.data))
        };
        let mut pairs = adapter.map(|a| a.pairs(&config)).transpose()?.unwrap_or_default();
        let (d, kv, ff) = (config.dim, config.n_kv_heads * config.head_dim, config.ffn_dim);
        let embed = Arc::new(matrix("token_embd.weight", config.vocab, d)?);
        let head = match w.tensor("output.weight")? {
            Some(_) => Arc::new(matrix("output.weight", config.vocab, d)?),
            None => Arc::clone(&embed),
        };
        let layers = (0..config.n_layers)
            .map(|i| {
                let m = |part: &str, r, c| matrix(&format!("blk.{i}.{part}.weight"), r, c);
                let v = |part: &str| vector(&format!("blk.{i}.{part}.weight"), d);
                let lora = PARTS.map(|part| pairs.remove(&format!("blk.{i}.{part}")));
                let lora = lora
                    .into_iter()
                    .zip(PARTS)
                    .map(|(p, part)| p.map(|p| Lora::new(p, &format!("blk.{i}.{part}"))).transpose())
                    .collect::<Result<Vec<_>>>()?;
                Ok(Layer {
                    lora,
                    attn_norm: v("attn_norm")?,
                    qkv: Products::new(vec![m("attn_q", d, d)?, m("attn_k", kv, d)?, m("attn_v", kv, d)?]),
                    wo: m("attn_output", d, d)?,
                    ffn_norm: v("ffn_norm")?,
                    gate_up: Products::new(vec![m("ffn_gate", ff, d)?, m("ffn_up", ff, d)?]),
                    w_down: m("ffn_down", d, ff)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(left) = pairs.keys().next() {
            return Err(LlmError::model(format!("adapter layer {left} is not a layer of this model")));
        }
        let norm = vector("output_norm.weight", d)?;
        // The float path's angles: computed in f64, rounded to f32.
        let half = config.head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|j| (j as f64 * (-2.0 / config.head_dim as f64) * config.rope_base.ln()).exp())
            .collect();
        let mut cos = Vec::with_capacity(config.context_len * half);
        let mut sin = Vec::with_capacity(config.context_len * half);
        for p in 0..config.context_len {
            for f in &inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("volt-llm-kernel-{i}"))
            .build()
            .map_err(|e| LlmError::model(format!("cannot start {threads} kernel threads: {e}")))?;
        Ok(QuantLlama { config, embed, head, layers, norm, cos, sin, pool })
    }

    /// The model's numbers.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Bytes of weights one decode step reads (each matrix once; a tied head once more).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.qkv.bytes() + l.wo.bytes() + l.gate_up.bytes() + l.w_down.bytes())
            .sum();
        layers + self.head.bytes()
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(self.config.dim) {
            let variance = dot(row, row) / self.config.dim as f32;
            let scale = 1.0 / (variance + self.config.eps as f32).sqrt();
            out.extend(row.iter().zip(weight).map(|(v, w)| v * scale * w));
        }
        out
    }

    /// Rotates adjacent pairs of each head of each row by its position's angles.
    fn rope(&self, x: &mut [f32], width: usize, positions: &[usize]) {
        let half = self.config.head_dim / 2;
        for (row, &p) in x.chunks_exact_mut(width).zip(positions) {
            let (cos, sin) = (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half]);
            for head in row.chunks_exact_mut(self.config.head_dim) {
                for (j, pair) in head.chunks_exact_mut(2).enumerate() {
                    let (x0, x1) = (pair[0], pair[1]);
                    pair[0] = x0 * cos[j] - x1 * sin[j];
                    pair[1] = x0 * sin[j] + x1 * cos[j];
                }
            }
        }
    }

    /// Attention of query row `q` at position `pos` of a sequence whose cache holds
    /// `k`/`v` (at least `pos + 1` positions): every head over positions `0..=pos`.
    fn attend(&self, q: &[f32], k: &[f32], v: &[f32], pos: usize, out: &mut [f32]) {
        let c = &self.config;
        let (hd, kv_width, groups) = (c.head_dim, c.n_kv_heads * c.head_dim, c.n_heads / c.n_kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut scores = vec![0f32; pos + 1];
        for (h, (qh, oh)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
            let g = h / groups;
            for (t, s) in scores.iter_mut().enumerate() {
                let kt = &k[t * kv_width + g * hd..t * kv_width + (g + 1) * hd];
                *s = dot(qh, kt) * scale;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            oh.iter_mut().for_each(|o| *o = 0.0);
            for (t, s) in scores.iter().enumerate() {
                let p = s / total;
                let vt = &v[t * kv_width + g * hd..t * kv_width + (g + 1) * hd];
                for (o, x) in oh.iter_mut().zip(vt) {
                    *o += p * x;
                }
            }
        }
    }
}

/// Σ a·b in 16 running lanes (element i in lane i mod 16), the lanes then added in a
/// fixed tree: the same order for a given length wherever the values come from.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            lanes[j] += x[j] * y[j];
        }
    }
    for (j, (x, y)) in ra.iter().zip(rb).enumerate() {
        lanes[j] += x * y;
    }
    let mut width = 8;
    while width > 0 {
        for j in 0..width {
            lanes[j] += lanes[j + width];
        }
        width /= 2;
    }
    lanes[0]
}

impl Model for QuantLlama {
    type Cache = QuantCache;

    fn new_cache(&self) -> QuantCache {
        let empty = || (0..self.config.n_layers).map(|_| Vec::new()).collect();
        QuantCache { k: empty(), v: empty(), len: 0 }
    }

    fn cached(cache: &QuantCache) -> usize {
        cache.len
    }

    fn context_len(&self) -> usize {
        self.config.context_len
    }

    fn bytes_per_position(&self) -> usize {
        self.config.n_layers * 2 * self.config.n_kv_heads * self.config.head_dim * 4
    }

    fn step(&self, seqs: &mut [Step<'_, QuantCache>]) -> Result<Vec<Vec<Vec<f32>>>> {
        // The whole step on the kernel threads: each product's work is then shared by a
        // cheap fork inside the pool rather than a wake-up from outside it.
        self.pool.install(|| self.step_in_pool(seqs))
    }
}

impl QuantLlama {
    fn step_in_pool(&self, seqs: &mut [Step<'_, QuantCache>]) -> Result<Vec<Vec<Vec<f32>>>> {
        let c = &self.config;
        for s in seqs.iter() {
            check_step(s.tokens, s.cache.len, c.context_len, c.vocab)?;
        }
        let (dim, kv_width) = (c.dim, c.n_kv_heads * c.head_dim);
        // Each new row: its sequence and its position.
        let rows: Vec<(usize, usize)> = seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (s.cache.len..s.cache.len + s.tokens.len()).map(move |p| (i, p)))
            .collect();
        let n = rows.len();
        let positions: Vec<usize> = rows.iter().map(|r| r.1).collect();
        let mut x: Vec<f32> =
            seqs.iter().flat_map(|s| s.tokens.iter()).flat_map(|&t| self.embed.row(t as usize)).collect();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.attn_norm);
            let [mut q, mut k, mut v]: [Vec<f32>; 3] =
                layer.qkv.apply(&h, n, &self.pool).try_into().map_err(|_| LlmError::model("Q, K and V"))?;
            for (y, lora) in [&mut q, &mut k, &mut v].into_iter().zip(&layer.lora[..3]) {
                adapt(lora, &h, n, &self.pool, y);
            }
            self.rope(&mut q, dim, &positions);
            self.rope(&mut k, kv_width, &positions);
            let mut at = 0;
            for s in seqs.iter_mut() {
                let m = s.tokens.len();
                s.cache.k[l].extend_from_slice(&k[at * kv_width..(at + m) * kv_width]);
                s.cache.v[l].extend_from_slice(&v[at * kv_width..(at + m) * kv_width]);
                at += m;
            }
            let mut attn = vec![0f32; n * dim];
            let caches: Vec<&QuantCache> = seqs.iter().map(|s| &*s.cache).collect();
            self.pool.install(|| {
                attn.par_chunks_mut(dim).zip(q.par_chunks(dim)).zip(&rows).for_each(
                    |((out, qr), &(seq, pos))| {
                        let cache = caches[seq];
                        self.attend(qr, &cache.k[l], &cache.v[l], pos, out);
                    },
                );
            });
            let mut o = layer.wo.matmul(&attn, n, &self.pool);
            adapt(&layer.lora[3], &attn, n, &self.pool, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = self.rms_norm(&x, &layer.ffn_norm);
            let [mut gate, mut up]: [Vec<f32>; 2] = layer
                .gate_up
                .apply(&h, n, &self.pool)
                .try_into()
                .map_err(|_| LlmError::model("gate and up"))?;
            adapt(&layer.lora[4], &h, n, &self.pool, &mut gate);
            adapt(&layer.lora[5], &h, n, &self.pool, &mut up);
            let act: Vec<f32> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let mut down = layer.w_down.matmul(&act, n, &self.pool);
            adapt(&layer.lora[6], &act, n, &self.pool, &mut down);
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        // The head only for the rows whose logits are wanted (it is the largest matrix).
        let mut wanted = Vec::new();
        let mut at = 0;
        for s in seqs.iter_mut() {
            let m = s.tokens.len();
            s.cache.len += m;
            wanted.extend(if s.all_logits { at..at + m } else { at + m - 1..at + m });
            at += m;
        }
        let picked: Vec<f32> =
            wanted.iter().flat_map(|&r| x[r * dim..(r + 1) * dim].iter().copied()).collect();
        let h = self.rms_norm(&picked, &self.norm);
        let logits = self.head.matmul(&h, wanted.len(), &self.pool);
        let mut rows_out = logits.chunks_exact(c.vocab).map(<[f32]>::to_vec);
        Ok(seqs
            .iter()
            .map(|s| {
                let m = if s.all_logits { s.tokens.len() } else { 1 };
                rows_out.by_ref().take(m).collect()
            })
            .collect())
    }
}
