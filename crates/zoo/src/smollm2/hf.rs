//! A Hugging Face model folder from a (merged) SmolLM2: `model.safetensors` under
//! transformers' Llama names, `config.json`, `generation_config.json`, and a
//! `tokenizer.json` + `tokenizer_config.json` that volt builds from the GGUF file's own
//! vocabulary, merges, pre-tokenizer and chat template. transformers, LitGPT's
//! `convert_hf_checkpoint` and PEFT read such a folder.
use super::SmolLm2;
use serde_json::json;
use std::path::Path;
use volt_formats::gguf::Gguf;
use volt_llm::{GgufTokenizer, LlamaConfig};

/// The files of a Hugging Face model folder.
pub const FILES: [&str; 5] =
    ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"];

fn token_text(g: &Gguf, id: Option<u32>) -> Option<String> {
    let tokens = g.get("tokenizer.ggml.tokens").ok()?.as_array()?;
    tokens.get(id? as usize)?.as_str().map(str::to_owned)
}

/// Writes `model`'s weights (adapters folded in) and its base's configuration and
/// tokenizer into a new folder `out`: written beside it, then renamed into place, so a
/// failure leaves no half folder. An `out` that exists is refused.
pub fn write_model_folder(model: &SmolLm2, out: &Path) -> Result<(), String> {
    if out.exists() {
        return Err(format!("--out {}: exists; give a new folder", out.display()));
    }
    let path = model.base_path();
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let in_file = |e: String| format!("{}: {e}", path.display());
    let g = Gguf::parse(&bytes).map_err(|e| in_file(e.to_string()))?;
    let c = LlamaConfig::from_gguf(&g).map_err(|e| in_file(e.to_string()))?;
    let tokenizer = GgufTokenizer::from_gguf(&g).map_err(|e| in_file(e.to_string()))?;
    let eos = g.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    let pad = g.metadata.get("tokenizer.ggml.padding_token_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    let name =
        |id: Option<u32>| token_text(&g, id).map_or(serde_json::Value::Null, serde_json::Value::String);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": c.dim,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_len,
        "rms_norm_eps": c.eps,
        "rope_theta": c.rope_base,
        "rope_scaling": null,
        "vocab_size": c.vocab,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "use_cache": true,
        "bos_token_id": tokenizer.bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    });
    let generation = json!({"bos_token_id": tokenizer.bos, "eos_token_id": eos, "pad_token_id": pad});
    let chat_template = g.metadata.get("tokenizer.chat_template").and_then(|v| v.as_str());
    let tokenizer_config = json!({
        // Not GPT2Tokenizer: transformers would rebuild GPT-2's pre-tokenizer and drop the digit split.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(tokenizer.bos),
        "eos_token": name(eos),
        "pad_token": name(pad),
        "unk_token": name(g.metadata.get("tokenizer.ggml.unknown_token_id").and_then(|v| v.as_u64()).map(|v| v as u32)),
        "add_bos_token": tokenizer.add_bos,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": c.context_len,
        "chat_template": chat_template,
    });
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        out.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let write = || -> Result<(), String> {
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
        volt_train::checkpoint::write_tensors(&tmp.join(FILES[0]), &model.merged_tensors(), metadata)
            .map_err(|e| e.to_string())?;
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        let tokenizer_json = tokenizer.to_json().map_err(|e| e.to_string())?;
        for (file, text) in [
            (FILES[1], pretty(&config)),
            (FILES[2], pretty(&generation)),
            (FILES[3], tokenizer_json),
            (FILES[4], pretty(&tokenizer_config)),
        ] {
            volt_formats::atomic::write_atomic(&tmp.join(file), text.as_bytes())
                .map_err(|e| format!("{}: {e}", tmp.join(file).display()))?;
        }
        std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })
}
