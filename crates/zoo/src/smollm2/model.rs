//! The Llama architecture as a trainable module: the weights of a GGUF file in a
//! `VarStore` under Hugging Face's names (`model.layers.0.self_attn.q_proj.weight`), so
//! that adapters and merged weights map onto `transformers`' model by name.
//!
//! llama.cpp's converter stores each head's query and key rows interleaved (GGUF row
//! 2j+t is Hugging Face's row t·d/2 + j); they are put back in Hugging Face's order at
//! load, and RoPE rotates halves (`rotate_half`) as transformers does. volt-llm's
//! inference model keeps the file's order and rotates pairs: the two agree.
use tch::{nn, Device, Kind, Tensor};
use volt_formats::gguf::Gguf;
use volt_llm::LlamaConfig;
use volt_train::lora::{LoraConfig, LoraLinear};

/// A linear layer of the model: frozen with an optional adapter (LoRA), or trainable.
enum Linear {
    Lora(LoraLinear),
    Full(Tensor),
}

impl Linear {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Linear::Lora(l) => nn::ModuleT::forward_t(l, x, train),
            Linear::Full(w) => x.linear::<Tensor>(w, None),
        }
    }
}

struct Block {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The names of every linear layer of a model with `n_layers` blocks, in load order
/// (what LoRA targets are chosen among; the tied output head is not one of them).
pub fn linear_layer_names(n_layers: usize) -> Vec<String> {
    (0..n_layers)
        .flat_map(|i| {
            let attn =
                ["q_proj", "k_proj", "v_proj", "o_proj"].map(|p| format!("model.layers.{i}.self_attn.{p}"));
            let mlp = ["gate_proj", "up_proj", "down_proj"].map(|p| format!("model.layers.{i}.mlp.{p}"));
            attn.into_iter().chain(mlp)
        })
        .collect()
}

/// GGUF's interleaved query/key rows (`[heads · head_dim, in]`) in Hugging Face's order.
pub fn unpermute_rows(w: &Tensor, heads: i64) -> Tensor {
    let (rows, cols) = w.size2().unwrap_or((0, 0));
    let hd = rows / heads.max(1);
    w.view([heads, hd / 2, 2, cols]).transpose(1, 2).reshape([rows, cols])
}

/// A Llama model whose variables live in a `VarStore`.
pub struct LlamaModel {
    config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    /// Rotary cosines and sines, `[context_len, head_dim]` (each half repeated).
    cos: Tensor,
    sin: Tensor,
}

/// Why a model could not be built from a file, in words.
pub type BuildError = String;

impl LlamaModel {
    /// The model in GGUF file `bytes` (header `g`), dequantized to f32 under `root`:
    /// with `lora`, every weight frozen and the chosen linear layers adapted; without,
    /// every weight trainable (full fine-tuning).
    pub fn from_gguf(
        root: &nn::Path,
        bytes: &[u8],
        g: &Gguf,
        lora: Option<&LoraConfig>,
    ) -> Result<Self, BuildError> {
        let config = LlamaConfig::from_gguf(g).map_err(|e| e.to_string())?;
        if g.tensor("output.weight").is_ok() {
            return Err("the file has its own output.weight: volt fine-tunes tied-embedding Llama models \
                        (SmolLM2's kind) only"
                .into());
        }
        let device = root.device();
        let tensor = |name: &str, shape: &[i64]| -> Result<Tensor, BuildError> {
            let info = g.tensor(name).map_err(|e| e.to_string())?;
            if info.shape() != shape {
                return Err(format!(
                    "tensor {name} has shape {:?}, the metadata makes it {shape:?}",
                    info.shape()
                ));
            }
            let values = g.dequantize(bytes, info).map_err(|e| e.to_string())?;
            Ok(Tensor::from_slice(&values).view(shape).to_device(device))
        };
        let names = linear_layer_names(config.n_layers);
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let adapted: Vec<&str> = match lora {
            Some(l) => l.select(&name_refs).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let trainable = lora.is_none();
        let var = |path: &nn::Path, name: &str, t: Tensor| {
            path.add(name, t.set_requires_grad(trainable), trainable)
        };
        let linear = |path: &str, weight: Tensor| -> Result<Linear, BuildError> {
            let mut p = root.clone();
            for part in path.split('.') {
                p = &p / part;
            }
            if trainable {
                return Ok(Linear::Full(var(&p, "weight", weight)));
            }
            let adapter = adapted.contains(&path).then_some(lora).flatten();
            LoraLinear::new(&p, weight, None, adapter).map(Linear::Lora).map_err(|e| e.to_string())
        };
        let (d, kv, ff) =
            (config.dim as i64, (config.n_kv_heads * config.head_dim) as i64, config.ffn_dim as i64);
        let (heads, kv_heads) = (config.n_heads as i64, config.n_kv_heads as i64);
        let model = root / "model";
        let embed = var(
            &(&model / "embed_tokens"),
            "weight",
            tensor("token_embd.weight", &[config.vocab as i64, d])?,
        );
        let layers = (0..config.n_layers)
            .map(|i| -> Result<Block, BuildError> {
                let t = |part: &str, shape: &[i64]| tensor(&format!("blk.{i}.{part}.weight"), shape);
                let at = |name: &str| format!("model.layers.{i}.{name}");
                let layer = &model / "layers" / i;
                Ok(Block {
                    input_norm: var(&(&layer / "input_layernorm"), "weight", t("attn_norm", &[d])?),
                    q: linear(&at("self_attn.q_proj"), unpermute_rows(&t("attn_q", &[d, d])?, heads))?,
                    k: linear(&at("self_attn.k_proj"), unpermute_rows(&t("attn_k", &[kv, d])?, kv_heads))?,
                    v: linear(&at("self_attn.v_proj"), t("attn_v", &[kv, d])?)?,
                    o: linear(&at("self_attn.o_proj"), t("attn_output", &[d, d])?)?,
                    post_norm: var(&(&layer / "post_attention_layernorm"), "weight", t("ffn_norm", &[d])?),
                    gate: linear(&at("mlp.gate_proj"), t("ffn_gate", &[ff, d])?)?,
                    up: linear(&at("mlp.up_proj"), t("ffn_up", &[ff, d])?)?,
                    down: linear(&at("mlp.down_proj"), t("ffn_down", &[d, ff])?)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let norm = var(&(&model / "norm"), "weight", tensor("output_norm.weight", &[d])?);
        let half = (config.head_dim / 2) as i64;
        let inv_freq = (Tensor::arange(half, (Kind::Double, device))
            * (-2.0 / config.head_dim as f64)
            * config.rope_base.ln())
        .exp();
        let angles = Tensor::arange(config.context_len as i64, (Kind::Double, device)).outer(&inv_freq);
        let angles = Tensor::cat(&[&angles, &angles], 1);
        let (cos, sin) = (angles.cos().to_kind(Kind::Float), angles.sin().to_kind(Kind::Float));
        Ok(LlamaModel { config, embed, layers, norm, cos, sin })
    }

    /// The model's numbers.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights are on.
    pub fn device(&self) -> Device {
        self.embed.device()
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor) -> Tensor {
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        x * (variance + self.config.eps).rsqrt() * weight
    }

    /// transformers' `apply_rotary_pos_emb` on `x` (`[B, heads, T, head_dim]`).
    fn rope(&self, x: &Tensor, t: i64) -> Tensor {
        let hd = self.config.head_dim as i64;
        let kind = x.kind();
        let (cos, sin) = (self.cos.narrow(0, 0, t).to_kind(kind), self.sin.narrow(0, 0, t).to_kind(kind));
        let (x1, x2) = (x.narrow(-1, 0, hd / 2), x.narrow(-1, hd / 2, hd / 2));
        let rotated = Tensor::cat(&[-x2, x1], -1);
        x * cos + rotated * sin
    }

    /// The final hidden states (`[B, T, dim]`, after the last norm) of ids `[B, T]`,
    /// causal attention from position 0.
    pub fn hidden(&self, ids: &Tensor, train: bool) -> Tensor {
        let c = &self.config;
        let (b, t) = ids.size2().unwrap_or((0, 0));
        let (heads, kv_heads, hd) = (c.n_heads as i64, c.n_kv_heads as i64, c.head_dim as i64);
        let groups = heads / kv_heads;
        let mut x = Tensor::embedding(&self.embed, ids, -1, false, false);
        for layer in &self.layers {
            let h = self.rms_norm(&x, &layer.input_norm);
            let split = |y: Tensor, n: i64| y.view([b, t, n, hd]).transpose(1, 2);
            let q = self.rope(&split(layer.q.forward(&h, train), heads), t);
            let k = self.rope(&split(layer.k.forward(&h, train), kv_heads), t);
            let v = split(layer.v.forward(&h, train), kv_heads);
            let attn = Tensor::scaled_dot_product_attention(
                &q,
                &k.repeat_interleave_self_int(groups, 1, None),
                &v.repeat_interleave_self_int(groups, 1, None),
                None::<&Tensor>,
                0.0,
                true,
                None,
                false,
            );
            // Not `+=`: autograd still needs this `x` (the norm read it).
            x = &x + layer.o.forward(&attn.transpose(1, 2).reshape([b, t, heads * hd]), train);
            let h = self.rms_norm(&x, &layer.post_norm);
            let gate = layer.gate.forward(&h, train).silu();
            x = &x + layer.down.forward(&(gate * layer.up.forward(&h, train)), train);
        }
        self.rms_norm(&x, &self.norm)
    }

    /// Logits over the vocabulary of hidden states (the head is tied to the embedding).
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(&self.embed, None)
    }

    /// Logits `[B, T, vocab]` of ids `[B, T]`.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Tensor {
        self.head(&self.hidden(ids, train))
    }

    /// The mean cross-entropy of predicting `labels[:, 1:]` from `ids[:, :-1]`, over the
    /// labels that are not [`IGNORE_INDEX`] (prompt and padding). The head runs on those
    /// positions only: it is the largest matrix, and masked positions add nothing. A
    /// batch shorter than 2, past the context, with ids outside the vocabulary or with
    /// nothing to learn is an error, not a crash or a NaN.
    pub fn loss(&self, ids: &Tensor, labels: &Tensor, train: bool) -> Result<Tensor, String> {
        let (t, c) = (ids.size2().map_or(0, |s| s.1), &self.config);
        if t < 2 || t as usize > c.context_len {
            return Err(format!(
                "a batch of {t} positions: from 2 to the model's context of {} learn",
                c.context_len
            ));
        }
        if labels.size() != ids.size() {
            return Err(format!("labels {:?} do not match ids {:?}", labels.size(), ids.size()));
        }
        let (low, high) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if low < 0 || high as usize >= c.vocab {
            return Err(format!("token ids from {low} to {high}: the model's vocabulary is 0..{}", c.vocab));
        }
        let hidden = self.hidden(ids, train).narrow(1, 0, t - 1).reshape([-1, c.dim as i64]);
        let targets = labels.narrow(1, 1, t - 1).reshape([-1]);
        let keep = targets.ne(IGNORE_INDEX).nonzero().squeeze_dim(1);
        if keep.size()[0] == 0 {
            return Err("no position of the batch has a label to learn (all IGNORE_INDEX)".into());
        }
        let logits = self.head(&hidden.index_select(0, &keep));
        Ok(logits.cross_entropy_loss::<Tensor>(
            &targets.index_select(0, &keep),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        ))
    }
}

/// The label of a position that is not learnt (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;
