//! `volt serve --model smollm2 --adapter DIR` (a LoRA adapter served unmerged beside the
//! quantized base) and `--model-dir DIR` (a Hugging Face folder): the adapter answers as
//! the folder `volt lora merge` makes of it does, the base's folder as the GGUF file
//! does, and what does not fit is refused by name before the server starts.
mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::llm::{block_on, post, serve};

const TEXT: &str = "def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n\n\
                    The quick brown fox jumps over the lazy dog, and the dog sleeps on.";
const PROMPTS: [&str; 2] =
    ["Write a Python function that reverses a string.", "Write a haiku about the sea."];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn volt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt")).current_dir(repo()).args(args).output().expect("run volt")
}

/// A PEFT adapter on every linear layer of SmolLM2's 30 blocks (r 8, alpha 16), with
/// values large enough to change its answers, and `metadata` in the tensor file's header.
fn write_adapter(dir: &Path, metadata: HashMap<String, String>) {
    std::fs::create_dir_all(dir).expect("mkdir");
    tch::manual_seed(7);
    let bytes = std::fs::read(repo().join(".smollm2")).expect("the GGUF file: run scripts/setup");
    let g = volt_formats::gguf::Gguf::parse(&bytes).expect("gguf");
    let r = 8;
    let mut tensors = Vec::new();
    for l in volt_llm::LlamaConfig::from_gguf(&g).expect("config").linear_layers() {
        let random = |shape: [i64; 2]| tch::Tensor::randn(shape, tch::kind::FLOAT_CPU) * 0.03;
        tensors.push((format!("base_model.model.{}.lora_A.weight", l.hf), random([r, l.cols])));
        tensors.push((format!("base_model.model.{}.lora_B.weight", l.hf), random([l.rows, r])));
    }
    assert_eq!(tensors.len(), 420);
    volt_train::checkpoint::write_tensors(&dir.join("adapter_model.safetensors"), &tensors, metadata)
        .expect("write adapter");
    let config = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16, "lora_dropout": 0.0,
        "bias": "none", "base_model_name_or_path": "SmolLM2-135M-Instruct",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("write config");
}

/// What a server says: each prompt's greedy answer and its tokens' logprobs, and the
/// logprob of every token of [`TEXT`] after the ones before it.
#[derive(Debug)]
struct Said {
    answers: Vec<String>,
    answer_logprobs: Vec<Vec<f64>>,
    text_logprobs: Vec<f64>,
}

fn ask(args: &[&str]) -> Said {
    let served = serve(args);
    block_on(async {
        let client = reqwest::Client::new();
        let mut said = Said { answers: vec![], answer_logprobs: vec![], text_logprobs: vec![] };
        for prompt in PROMPTS {
            let body = json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0,
                              "max_tokens": 24, "logprobs": true});
            let (status, v) = post(&client, &served.chat_url(), &body).await;
            assert_eq!(status, 200, "{v}");
            said.answers.push(v["choices"][0]["message"]["content"].as_str().expect("content").to_owned());
            let lp = v["choices"][0]["logprobs"]["content"].as_array().expect("logprobs");
            said.answer_logprobs.push(lp.iter().map(|t| t["logprob"].as_f64().expect("logprob")).collect());
        }
        let body = json!({"prompt": TEXT, "echo": true, "logprobs": 0, "max_tokens": 0});
        let (status, v) = post(&client, &format!("{}/v1/completions", served.url), &body).await;
        assert_eq!(status, 200, "{v}");
        let lp = v["choices"][0]["logprobs"]["token_logprobs"].as_array().expect("token_logprobs");
        said.text_logprobs = lp.iter().filter_map(Value::as_f64).collect();
        said
    })
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn ok(out: &Output) {
    assert!(out.status.success(), "volt failed:\n{}\n{}", support::stdout(out), support::stderr(out));
}

#[test]
fn an_unmerged_adapter_answers_as_its_merged_folder_and_the_base_folder_as_the_gguf_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let adapter = dir.path().join("adapter");
    write_adapter(&adapter, HashMap::new());
    let (adapter_arg, merged, base) =
        (adapter.display().to_string(), dir.path().join("merged"), dir.path().join("base"));
    ok(&volt(&["lora", "merge", "--adapter", &adapter_arg, "--out", &merged.display().to_string()]));
    ok(&volt(&["lora", "merge", "--out", &base.display().to_string()]));

    let gguf = ask(&["--model", "smollm2"]);
    let base_folder = ask(&["--model", "smollm2", "--model-dir", &base.display().to_string()]);
    let unmerged = ask(&["--model", "smollm2", "--adapter", &adapter_arg]);
    let merged_folder = ask(&["--model", "smollm2", "--model-dir", &merged.display().to_string()]);
    let on_folder =
        ask(&["--model", "smollm2", "--model-dir", &base.display().to_string(), "--adapter", &adapter_arg]);
    eprintln!(
        "base: {:?}\nadapter: {:?}\nlogprob change {}, unmerged vs merged {}",
        gguf.answers,
        unmerged.answers,
        max_diff(&unmerged.text_logprobs, &gguf.text_logprobs),
        max_diff(&unmerged.text_logprobs, &merged_folder.text_logprobs)
    );

    // The base folder holds the GGUF file's dequantized values, and the kernels compute
    // a float block as they compute a quantized one.
    assert_eq!(base_folder.answers, gguf.answers);
    let d = max_diff(&base_folder.text_logprobs, &gguf.text_logprobs);
    assert!(d < 1e-4, "base folder vs GGUF file: {d}");
    assert!(gguf.text_logprobs.len() > 30, "{:?}", gguf.text_logprobs);

    // The adapter changes what the model says...
    assert_ne!(unmerged.answers, gguf.answers);
    assert!(max_diff(&unmerged.text_logprobs, &gguf.text_logprobs) > 0.05);
    // ...and unmerged it says what the merged weights say: W x + s·B(A x) = (W + s·BA) x
    // but for float rounding.
    assert_eq!(unmerged.answers, merged_folder.answers);
    for (a, b) in unmerged.answer_logprobs.iter().zip(&merged_folder.answer_logprobs) {
        assert!(max_diff(a, b) < 1e-3, "answer logprobs: {a:?} vs {b:?}");
    }
    let d = max_diff(&unmerged.text_logprobs, &merged_folder.text_logprobs);
    assert!(d < 1e-3, "unmerged vs merged: {d}");
    // An adapter on a folder base is the same model as on the GGUF file.
    assert_eq!(on_folder.answers, unmerged.answers);
    let d = max_diff(&on_folder.text_logprobs, &unmerged.text_logprobs);
    assert!(d < 1e-4, "adapter on the base folder vs on the GGUF file: {d}");
}

fn refused(args: &[&str], says: &str) {
    let out = volt(&[&["serve", "--port", "0"], args].concat());
    assert_eq!(out.status.code(), Some(2), "{}\n{}", support::stdout(&out), support::stderr(&out));
    assert!(support::stderr(&out).contains(says), "wanted {says:?} in:\n{}", support::stderr(&out));
}

#[test]
fn adapters_and_folders_that_do_not_fit_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = dir.path().join("other-base");
    let sha = "0".repeat(64);
    write_adapter(
        &other,
        HashMap::from([
            ("volt.base_sha256".to_owned(), sha.clone()),
            ("volt.base_file".to_owned(), "Other.gguf".to_owned()),
        ]),
    );
    let other_arg = other.display().to_string();
    refused(
        &["--model", "smollm2", "--adapter", &other_arg],
        &format!("trained on base Other.gguf (sha256 {sha})"),
    );
    refused(
        &["--model", "digits-mlp", "--adapter", &other_arg],
        "qualifies an LLM (--model smollm2 or --gguf PATH), not digits-mlp",
    );
    refused(&["--model", "minilm", "--adapter", &other_arg], "qualifies an LLM");

    // An adapter on the head, which volt's Llama does not adapt.
    let head = dir.path().join("head");
    std::fs::create_dir_all(&head).expect("mkdir");
    let tensors = vec![
        (
            "base_model.model.lm_head.lora_A.weight".to_owned(),
            tch::Tensor::zeros([8, 576], tch::kind::FLOAT_CPU),
        ),
        (
            "base_model.model.lm_head.lora_B.weight".to_owned(),
            tch::Tensor::zeros([49152, 8], tch::kind::FLOAT_CPU),
        ),
    ];
    volt_train::checkpoint::write_tensors(&head.join("adapter_model.safetensors"), &tensors, HashMap::new())
        .expect("write");
    let config = json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["lm_head"]});
    std::fs::write(head.join("adapter_config.json"), config.to_string()).expect("config");
    refused(
        &["--model", "smollm2", "--adapter", &head.display().to_string()],
        "adapter layer lm_head is not a linear layer",
    );

    // A rank that differs between A and B.
    let torn = dir.path().join("torn");
    std::fs::create_dir_all(&torn).expect("mkdir");
    let name = "base_model.model.model.layers.0.self_attn.q_proj";
    let tensors = vec![
        (format!("{name}.lora_A.weight"), tch::Tensor::zeros([8, 576], tch::kind::FLOAT_CPU)),
        (format!("{name}.lora_B.weight"), tch::Tensor::zeros([576, 4], tch::kind::FLOAT_CPU)),
    ];
    volt_train::checkpoint::write_tensors(&torn.join("adapter_model.safetensors"), &tensors, HashMap::new())
        .expect("write");
    std::fs::write(torn.join("adapter_config.json"), config.to_string().replace("lm_head", "q_proj"))
        .expect("config");
    refused(
        &["--model", "smollm2", "--adapter", &torn.display().to_string()],
        "adapter layer model.layers.0.self_attn.q_proj: lora_A [8, 576] and lora_B [576, 4] do not fit its weight [576, 576]",
    );

    // A folder without config.json, and one whose config asks for scaled RoPE.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    refused(&["--model", "smollm2", "--model-dir", &empty.display().to_string()], "config.json");
    let scaled = dir.path().join("scaled");
    std::fs::create_dir_all(&scaled).expect("mkdir");
    let config = json!({"model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rope_scaling": {"rope_type": "linear", "factor": 2.0}});
    std::fs::write(scaled.join("config.json"), config.to_string()).expect("config");
    refused(&["--model", "smollm2", "--model-dir", &scaled.display().to_string()], "does not scale RoPE");
    refused(
        &["--gguf", "x.gguf", "--model-dir", &scaled.display().to_string()],
        "--model-dir qualifies --model",
    );
}
