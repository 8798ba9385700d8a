//! BERT's encoder in tch, with Hugging Face's parameter names so that a BERT
//! `model.safetensors` loads straight into its VarStore.
use serde::Deserialize;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The fields of a Hugging Face BERT `config.json` that the encoder uses.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Width of every hidden state.
    pub hidden_size: i64,
    /// Transformer layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Width of the feed-forward layer.
    pub intermediate_size: i64,
    /// Longest sequence the position embeddings cover.
    pub max_position_embeddings: i64,
    /// Token types (segments).
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer (`gelu` only).
    pub hidden_act: String,
}

struct Layer {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    /// query, key and value stacked into one projection (one matmul instead of three) for
    /// inference; a copy made when weights are loaded, so training uses the three.
    qkv: Option<(Tensor, Tensor)>,
    attention_out: nn::Linear,
    attention_norm: nn::LayerNorm,
    intermediate: nn::Linear,
    output: nn::Linear,
    output_norm: nn::LayerNorm,
}

/// BERT's embeddings and encoder layers (no pooler: sentence models pool themselves).
pub struct Bert {
    vs: nn::VarStore,
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    embedding_norm: nn::LayerNorm,
    layers: Vec<Layer>,
    heads: i64,
}

fn layer_norm(p: nn::Path, config: &BertConfig) -> nn::LayerNorm {
    let c = nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() };
    nn::layer_norm(p, vec![config.hidden_size], c)
}

impl Bert {
    /// An encoder with Hugging Face's parameter names, randomly initialised on `device`.
    pub fn new(config: &BertConfig, device: Device) -> Result<Bert, String> {
        if config.hidden_act != "gelu" {
            return Err(format!("hidden_act \"{}\" is not supported (only \"gelu\")", config.hidden_act));
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err("hidden_size must be a multiple of num_attention_heads".into());
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let e = &root / "embeddings";
        let h = config.hidden_size;
        let emb = |name: &str, n: i64| nn::embedding(&e / name, n, h, Default::default());
        let word = emb("word_embeddings", config.vocab_size);
        let position = emb("position_embeddings", config.max_position_embeddings);
        let token_type = emb("token_type_embeddings", config.type_vocab_size);
        let embedding_norm = layer_norm(&e / "LayerNorm", config);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &root / "encoder" / "layer" / i;
                let linear = |p: nn::Path, i: i64, o: i64| nn::linear(p, i, o, Default::default());
                let a = &l / "attention";
                Layer {
                    query: linear(&a / "self" / "query", h, h),
                    key: linear(&a / "self" / "key", h, h),
                    value: linear(&a / "self" / "value", h, h),
                    qkv: None,
                    attention_out: linear(&a / "output" / "dense", h, h),
                    attention_norm: layer_norm(&a / "output" / "LayerNorm", config),
                    intermediate: linear(&l / "intermediate" / "dense", h, config.intermediate_size),
                    output: linear(&l / "output" / "dense", config.intermediate_size, h),
                    output_norm: layer_norm(&l / "output" / "LayerNorm", config),
                }
            })
            .collect();
        Ok(Bert { vs, word, position, token_type, embedding_norm, layers, heads: config.num_attention_heads })
    }

    /// Copies the weights of a Hugging Face `model.safetensors` in (every parameter must
    /// be there; extra entries such as the pooler are ignored).
    pub fn load_weights(&mut self, path: &Path) -> Result<(), tch::TchError> {
        self.vs.load(path)?;
        for l in &mut self.layers {
            if let (Some(bq), Some(bk), Some(bv)) = (&l.query.bs, &l.key.bs, &l.value.bs) {
                let w = Tensor::cat(&[&l.query.ws, &l.key.ws, &l.value.ws], 0).detach();
                l.qkv = Some((w, Tensor::cat(&[bq, bk, bv], 0).detach()));
            }
        }
        Ok(())
    }

    /// The encoder's variables.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Hidden states `[B, T, H]` for token ids `[B, T]`; `mask` `[B, T]` is 1 for real
    /// tokens and 0 for padding, which no token attends to (`None`: no padding).
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
        self.run(ids, mask, false)
    }

    /// `forward` without autograd, with the fused query/key/value projection.
    pub fn infer(&self, ids: &Tensor, mask: Option<&Tensor>) -> Tensor {
        tch::no_grad(|| self.run(ids, mask, true))
    }

    fn run(&self, ids: &Tensor, mask: Option<&Tensor>, fused: bool) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let positions = Tensor::arange(t, (Kind::Int64, ids.device())).unsqueeze(0);
        let types = ids.zeros_like();
        let x = self.word.forward(ids) + self.position.forward(&positions) + self.token_type.forward(&types);
        let mut x = self.embedding_norm.forward(&x);
        // [B, 1, 1, T]: true where a key may be attended to.
        let attend = mask.map(|m| m.to_kind(Kind::Bool).view([b, 1, 1, t]));
        let heads = |y: &Tensor| y.view([b, t, self.heads, -1]).transpose(1, 2);
        for l in &self.layers {
            let (q, k, v) = match l.qkv.as_ref().filter(|_| fused) {
                Some((w, bias)) => {
                    let qkv = x.linear(w, Some(bias)).chunk(3, -1);
                    (heads(&qkv[0]), heads(&qkv[1]), heads(&qkv[2]))
                }
                None => (heads(&l.query.forward(&x)), heads(&l.key.forward(&x)), heads(&l.value.forward(&x))),
            };
            let a =
                Tensor::scaled_dot_product_attention(&q, &k, &v, attend.as_ref(), 0.0, false, None, false);
            let a = a.transpose(1, 2).contiguous().view([b, t, -1]);
            x = l.attention_norm.forward(&(l.attention_out.forward(&a) + &x));
            let f = l.output.forward(&l.intermediate.forward(&x).gelu("none"));
            x = l.output_norm.forward(&(f + &x));
        }
        x
    }
}
