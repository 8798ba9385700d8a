//! LoRA adapters served unmerged, as llama.cpp's `--lora` serves them: the base's
//! weights stay as stored (quantized, on the CPU path) and each adapted projection adds
//! `scale · B(Ax)` to its output, PEFT's order of operations.
use crate::error::{LlmError, Result};
use crate::llama::{Linear, LlamaConfig};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// An adapter's matrices by transformers' layer name (`model.layers.0.self_attn.q_proj`):
/// A `[r, in]` and B `[out, r]`, as PEFT stores them.
pub struct Adapter {
    /// `lora_alpha / r`.
    pub scale: f64,
    /// (A, B) of each adapted layer.
    pub layers: HashMap<String, (Tensor, Tensor)>,
}

/// One adapted projection, ready for a model: A `[rank, in]` and B `[out, rank]` in
/// GGUF's row order, row-major f32.
pub struct LoraPair {
    /// The adapter's rank.
    pub rank: usize,
    /// A's values.
    pub a: Vec<f32>,
    /// B's values.
    pub b: Vec<f32>,
    /// What B(Ax) is multiplied by.
    pub scale: f32,
}

impl Adapter {
    /// The adapter whose tensors are named `<layer>.lora_A.weight` and
    /// `<layer>.lora_B.weight`; a layer with one of the two is an error naming it.
    pub fn from_tensors(scale: f64, tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let mut layers = HashMap::new();
        for name in tensors.keys() {
            let Some(layer) = name.strip_suffix(".lora_A.weight") else {
                if !name.ends_with(".lora_B.weight") {
                    return Err(LlmError::model(format!(
                        "adapter tensor {name} is neither lora_A nor lora_B"
                    )));
                }
                if !tensors.contains_key(&name.replace(".lora_B.", ".lora_A.")) {
                    return Err(LlmError::model(format!("adapter tensor {name} has no lora_A beside it")));
                }
                continue;
            };
            let b = tensors
                .get(&format!("{layer}.lora_B.weight"))
                .ok_or_else(|| LlmError::model(format!("adapter tensor {name} has no lora_B beside it")))?;
            layers.insert(layer.to_owned(), (tensors[name].shallow_clone(), b.shallow_clone()));
        }
        Ok(Adapter { scale, layers })
    }

    /// Every layer's pair by GGUF layer name (`blk.0.attn_q`), checked against a model of
    /// `config`: a layer that is not one of its linear layers, or whose shapes do not fit
    /// it, is an error naming the layer and both shapes.
    pub fn pairs(&self, config: &LlamaConfig) -> Result<HashMap<String, LoraPair>> {
        let linears: HashMap<String, Linear> =
            config.linear_layers().into_iter().map(|l| (l.hf.clone(), l)).collect();
        let mut out = HashMap::new();
        let mut names: Vec<&String> = self.layers.keys().collect();
        names.sort();
        for hf in names {
            let Some(Linear { gguf, rows, cols, rotated_heads: heads, .. }) =
                linears.get(hf.as_str()).cloned()
            else {
                return Err(LlmError::model(format!(
                    "adapter layer {hf} is not a linear layer of this {}-block Llama",
                    config.n_layers
                )));
            };
            let (a, b) = &self.layers[hf];
            let (r, a_cols) =
                a.size2().map_err(|_| LlmError::model(format!("{hf}.lora_A is not a matrix")))?;
            let (b_rows, b_r) =
                b.size2().map_err(|_| LlmError::model(format!("{hf}.lora_B is not a matrix")))?;
            if a_cols != cols || b_rows != rows || b_r != r || r == 0 {
                return Err(LlmError::model(format!(
                    "adapter layer {hf}: lora_A {:?} and lora_B {:?} do not fit its weight [{rows}, {cols}]",
                    a.size(),
                    b.size()
                )));
            }
            let b = if heads > 0 {
                let hd = rows / heads as i64;
                b.view([heads as i64, 2, hd / 2, r]).transpose(1, 2).reshape([rows, r])
            } else {
                b.shallow_clone()
            };
            let values = |t: &Tensor| -> Result<Vec<f32>> {
                Vec::<f32>::try_from(
                    t.to_kind(Kind::Float).contiguous().view([-1]).to_device(tch::Device::Cpu),
                )
                .map_err(|e| LlmError::model(format!("adapter layer {hf}: {e}")))
            };
            out.insert(
                gguf,
                LoraPair { rank: r as usize, a: values(a)?, b: values(&b)?, scale: self.scale as f32 },
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::interleave_rows;

    fn config() -> LlamaConfig {
        LlamaConfig {
            n_layers: 2,
            dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            ffn_dim: 96,
            rope_base: 10_000.0,
            eps: 1e-5,
            vocab: 10,
            context_len: 8,
        }
    }

    #[test]
    fn query_and_key_adapters_move_their_rows_as_the_weights_do() {
        let (r, kv) = (3i64, 32i64);
        let b = Tensor::arange(kv * r, (Kind::Float, tch::Device::Cpu)).view([kv, r]);
        let tensors = HashMap::from([
            (
                "model.layers.1.self_attn.k_proj.lora_A.weight".to_owned(),
                Tensor::ones([r, 64], tch::kind::FLOAT_CPU),
            ),
            ("model.layers.1.self_attn.k_proj.lora_B.weight".to_owned(), b.shallow_clone()),
            (
                "model.layers.0.self_attn.v_proj.lora_A.weight".to_owned(),
                Tensor::ones([r, 64], tch::kind::FLOAT_CPU),
            ),
            ("model.layers.0.self_attn.v_proj.lora_B.weight".to_owned(), b.shallow_clone()),
        ]);
        let pairs = Adapter::from_tensors(0.5, &tensors).expect("adapter").pairs(&config()).expect("pairs");
        let values: Vec<f32> = Vec::try_from(b.view([-1])).expect("values");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let moved: Vec<f32> = interleave_rows(&bytes, kv as usize, 2, r as usize * 4)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let k = &pairs["blk.1.attn_k"];
        assert_eq!((k.rank, k.scale), (3, 0.5));
        assert_eq!(k.b, moved, "keys: GGUF's row order, as the weight's bytes are moved");
        assert_ne!(k.b, values);
        assert_eq!(pairs["blk.0.attn_v"].b, values, "values keep their rows");
    }
}
