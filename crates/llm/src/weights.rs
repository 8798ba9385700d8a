//! Where a Llama's tensors come from, asked for by GGUF's names and handed over in
//! GGUF's layout: a GGUF file, or a Hugging Face model folder (safetensors under
//! transformers' names, whose query and key rows are in `rotate_half` order and are put
//! in llama.cpp's interleaved order here, so both models rotate adjacent pairs).
use crate::error::{LlmError, Result};
use crate::llama::{check_heads, LlamaConfig};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use volt_formats::gguf::{Gguf, TensorType};

/// One tensor's bytes as stored (little-endian), its element type and shape (`[rows, cols]`).
pub struct Raw<'a> {
    /// Element type.
    pub kind: TensorType,
    /// The bytes, in GGUF's row order.
    pub data: Cow<'a, [u8]>,
    /// `[rows, cols]` of a matrix, `[len]` of a vector.
    pub shape: Vec<i64>,
}

/// A model's tensors by GGUF name (`token_embd.weight`, `blk.0.attn_q.weight`, ...).
pub trait Weights {
    /// The tensor `name`, or `None` when the model has none (an untied head).
    fn tensor(&self, name: &str) -> Result<Option<Raw<'_>>>;
}

/// The tensors of a GGUF file already read into memory.
pub struct GgufWeights<'a> {
    /// The whole file.
    pub bytes: &'a [u8],
    /// Its parsed header.
    pub header: &'a Gguf,
}

impl Weights for GgufWeights<'_> {
    fn tensor(&self, name: &str) -> Result<Option<Raw<'_>>> {
        let Ok(info) = self.header.tensor(name) else { return Ok(None) };
        let data = self.header.data(self.bytes, info)?;
        Ok(Some(Raw { kind: info.kind, data: Cow::Borrowed(data), shape: info.shape() }))
    }
}

/// A block's parts: GGUF's name and transformers' (under `model.layers.N.`).
pub const BLOCK_PARTS: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// transformers' name of the layer GGUF calls `gguf` (without `.weight`), e.g.
/// `blk.3.attn_q` -> `model.layers.3.self_attn.q_proj`.
pub fn hf_layer_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd" => return Some("model.embed_tokens".into()),
        "output_norm" => return Some("model.norm".into()),
        "output" => return Some("lm_head".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (block, part) = rest.split_once('.')?;
    let block: usize = block.parse().ok()?;
    let (_, hf) = BLOCK_PARTS.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{block}.{hf}"))
}

/// Rows of a query or key matrix (`heads` heads of `rows / heads` rows, `row_bytes` each)
/// from transformers' order (each head's two rotated halves one after the other) into
/// GGUF's (the pair a rotation turns on adjacent rows): GGUF's row 2j+t of a head is
/// transformers' row t·d/2 + j.
pub fn interleave_rows(data: &[u8], rows: usize, heads: usize, row_bytes: usize) -> Vec<u8> {
    let hd = rows / heads.max(1);
    let mut out = Vec::with_capacity(data.len());
    for h in 0..heads {
        for j in 0..hd / 2 {
            for t in 0..2 {
                let src = (h * hd + t * hd / 2 + j) * row_bytes;
                out.extend_from_slice(&data[src..src + row_bytes]);
            }
        }
    }
    out
}

/// Where one tensor lies in a folder's safetensors files.
struct Entry {
    file: usize,
    kind: TensorType,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// A Hugging Face Llama folder: `config.json` and `model.safetensors` (or the shards
/// `model.safetensors.index.json` lists), f32, f16 or bf16.
pub struct HfWeights {
    dir: PathBuf,
    config: LlamaConfig,
    tied: bool,
    files: Vec<Vec<u8>>,
    entries: HashMap<String, Entry>,
}

/// A JSON file of `dir`, parsed, or an error naming it.
pub fn read_json(dir: &Path, name: &str) -> Result<serde_json::Value> {
    let path = dir.join(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| LlmError::model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| LlmError::model(format!("{}: {e}", path.display())))
}

impl LlamaConfig {
    /// The configuration in a Hugging Face `config.json`; what volt's Llama does not
    /// compute (scaled RoPE, biases, another activation) is refused by its field's name.
    pub fn from_hf_config(json: &serde_json::Value) -> Result<Self> {
        let field = |name: &str| json.get(name).filter(|v| !v.is_null());
        let is_llama = field("model_type").and_then(|v| v.as_str()) == Some("llama")
            || field("architectures")
                .and_then(|v| v.as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some("LlamaForCausalLM")));
        if !is_llama {
            return Err(LlmError::model(format!(
                "config.json: model_type {}: volt serves the llama architecture only",
                field("model_type").map_or("(none)".into(), |v| v.to_string())
            )));
        }
        let n = |name: &str| -> Result<usize> {
            field(name)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| LlmError::model(format!("config.json: `{name}` is missing or not a number")))
        };
        for (name, fine) in [
            ("attention_bias", serde_json::json!(false)),
            ("mlp_bias", serde_json::json!(false)),
            ("hidden_act", serde_json::json!("silu")),
        ] {
            if let Some(v) = field(name).filter(|v| **v != fine) {
                return Err(LlmError::model(format!(
                    "config.json: {name} = {v}: volt's Llama computes only {fine}"
                )));
            }
        }
        // transformers 4 writes rope_theta and rope_scaling; 5 writes rope_parameters.
        let rope = field("rope_parameters");
        let rope_type = rope.and_then(|r| r.get("rope_type")).and_then(|v| v.as_str()).unwrap_or("default");
        if let Some(v) = field("rope_scaling")
            .filter(|_| rope_type == "default")
            .or_else(|| rope.filter(|_| rope_type != "default"))
        {
            return Err(LlmError::model(format!(
                "config.json: rope scaling {v}: volt's Llama does not scale RoPE"
            )));
        }
        let rope_base = field("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0);
        let dim = n("hidden_size")?;
        let n_heads = n("num_attention_heads")?;
        let n_kv_heads = n("num_key_value_heads").unwrap_or(n_heads);
        check_heads(dim, n_heads, n_kv_heads).map_err(|e| LlmError::model(format!("config.json: {e}")))?;
        if let Some(hd) =
            field("head_dim").and_then(|v| v.as_u64()).filter(|&hd| hd as usize != dim / n_heads)
        {
            return Err(LlmError::model(format!(
                "config.json: head_dim = {hd}: volt's Llama takes hidden_size / num_attention_heads = {}",
                dim / n_heads
            )));
        }
        Ok(LlamaConfig {
            n_layers: n("num_hidden_layers")?,
            dim,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads,
            ffn_dim: n("intermediate_size")?,
            rope_base,
            eps: field("rms_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-6),
            vocab: n("vocab_size")?,
            context_len: n("max_position_embeddings")?,
        })
    }
}

impl HfWeights {
    /// The folder `dir`'s configuration and tensor files, or an error naming the file.
    pub fn open(dir: &Path) -> Result<Self> {
        let json = read_json(dir, "config.json")?;
        let config = LlamaConfig::from_hf_config(&json)?;
        // transformers' LlamaConfig unties the head unless the file says otherwise.
        let tied = json.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);
        let names: Vec<String> = if dir.join("model.safetensors").is_file() {
            vec!["model.safetensors".into()]
        } else if dir.join("model.safetensors.index.json").is_file() {
            let index = read_json(dir, "model.safetensors.index.json")?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
                LlmError::model(format!(
                    "{}: no weight_map",
                    dir.join("model.safetensors.index.json").display()
                ))
            })?;
            let mut files: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            return Err(LlmError::model(format!(
                "{}: no model.safetensors or model.safetensors.index.json (volt reads safetensors folders)",
                dir.display()
            )));
        };
        let mut files = Vec::with_capacity(names.len());
        let mut entries = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let path = dir.join(name);
            let in_file = |e: String| LlmError::model(format!("{}: {e}", path.display()));
            let bytes = std::fs::read(&path).map_err(|e| in_file(e.to_string()))?;
            let (header, meta) =
                safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| in_file(e.to_string()))?;
            let header_end = 8 + header;
            for (tensor, info) in meta.tensors() {
                let kind = match info.dtype {
                    safetensors::Dtype::F32 => TensorType::F32,
                    safetensors::Dtype::F16 => TensorType::F16,
                    safetensors::Dtype::BF16 => TensorType::BF16,
                    other => {
                        return Err(in_file(format!(
                            "tensor {tensor} is {other:?}; volt reads F32, F16 and BF16"
                        )))
                    }
                };
                let (start, end) = (header_end + info.data_offsets.0, header_end + info.data_offsets.1);
                if end > bytes.len() {
                    return Err(in_file(format!("truncated: tensor {tensor} lies past the end of the file")));
                }
                let shape = info.shape.iter().map(|&d| d as i64).collect();
                entries.insert(tensor, Entry { file: i, kind, shape, start, end });
            }
            files.push(bytes);
        }
        Ok(HfWeights { dir: dir.to_owned(), config, tied, files, entries })
    }

    /// The model's numbers.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
}

impl Weights for HfWeights {
    fn tensor(&self, name: &str) -> Result<Option<Raw<'_>>> {
        let layer = name.strip_suffix(".weight").unwrap_or(name);
        if layer == "output" && self.tied {
            return Ok(None);
        }
        let hf = hf_layer_name(layer)
            .ok_or_else(|| LlmError::model(format!("no Hugging Face name for tensor {name}")))?;
        let hf = format!("{hf}.weight");
        let Some(e) = self.entries.get(&hf) else {
            return Err(LlmError::model(format!("{}: tensor {hf} is missing", self.dir.display())));
        };
        let data = &self.files[e.file][e.start..e.end];
        let heads = self.config.rotated_heads(layer.rsplit('.').next().unwrap_or_default());
        let data = match (heads, e.shape.as_slice()) {
            (heads, [rows, _]) if heads > 0 && *rows as usize == heads * self.config.head_dim => {
                let rows = *rows as usize;
                Cow::Owned(interleave_rows(data, rows, heads, data.len() / rows))
            }
            _ => Cow::Borrowed(data),
        };
        Ok(Some(Raw { kind: e.kind, data, shape: e.shape.clone() }))
    }
}

/// The tensor `name` of `w`, checked to have `shape` (what the configuration makes it),
/// or an error naming it.
pub fn checked<'a>(w: &'a dyn Weights, name: &str, shape: &[i64]) -> Result<Raw<'a>> {
    let raw = w.tensor(name)?.ok_or_else(|| LlmError::model(format!("tensor {name} is missing")))?;
    if raw.shape != shape {
        return Err(LlmError::model(format!(
            "tensor {name} has shape {:?}, the metadata makes it {shape:?}",
            raw.shape
        )));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_go_from_transformers_halves_to_ggufs_pairs() {
        // Two heads of four rows, one byte each: a head's rows t·2 + j go to 2j + t.
        let hf = [0u8, 1, 2, 3, 10, 11, 12, 13];
        assert_eq!(interleave_rows(&hf, 8, 2, 1), vec![0, 2, 1, 3, 10, 12, 11, 13]);
        // Whole rows move, whatever their width.
        let wide: Vec<u8> = (0..8).collect();
        assert_eq!(interleave_rows(&wide, 4, 1, 2), vec![0, 1, 4, 5, 2, 3, 6, 7]);
    }

    fn smollm2() -> serde_json::Value {
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
               "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
               "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 8192,
               "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "hidden_act": "silu", "rope_scaling": null})
    }

    #[test]
    fn configs_of_transformers_4_and_5_are_read_alike() {
        let four = LlamaConfig::from_hf_config(&smollm2()).expect("transformers 4");
        assert_eq!((four.dim, four.n_heads, four.n_kv_heads, four.head_dim), (576, 9, 3, 64));
        assert_eq!((four.rope_base, four.eps, four.context_len), (100000.0, 1e-5, 8192));
        let mut five = smollm2();
        five.as_object_mut().map(|o| {
            o.remove("rope_theta");
            o.remove("rope_scaling");
            o.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": 100000.0}))
        });
        assert_eq!(LlamaConfig::from_hf_config(&five).expect("transformers 5"), four);
    }

    #[test]
    fn what_volts_llama_does_not_compute_is_refused_by_field() {
        for (field, value, says) in [
            ("rope_scaling", json!({"rope_type": "linear", "factor": 2.0}), "does not scale RoPE"),
            ("rope_parameters", json!({"rope_type": "llama3", "factor": 8.0}), "does not scale RoPE"),
            ("attention_bias", json!(true), "attention_bias = true"),
            ("hidden_act", json!("gelu"), "hidden_act = \"gelu\""),
            ("head_dim", json!(128), "head_dim = 128"),
            ("model_type", json!("mistral"), "llama architecture only"),
            ("num_key_value_heads", json!(2), "do not divide"),
            ("hidden_size", json!("wide"), "`hidden_size` is missing or not a number"),
        ] {
            let mut c = smollm2();
            c[field] = value;
            if field == "model_type" {
                c["architectures"] = json!(["MistralForCausalLM"]);
            }
            let err = LlamaConfig::from_hf_config(&c).expect_err(field);
            assert!(err.to_string().contains(says), "{field}: wanted {says:?} in: {err}");
        }
    }
}
