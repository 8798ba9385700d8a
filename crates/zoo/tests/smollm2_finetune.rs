//! Fine-tuning SmolLM2 (the real GGUF file `scripts/setup` links as .smollm2): LoRA
//! trains the adapters and nothing else, the loss is the mean over answer tokens, PEFT
//! and transformers load volt's adapter and agree on the logits, and bad records,
//! lengths and target names are refused by name.
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};
use volt_train::{BatchLimit, Trainer, TrainerConfig, VoltModule};
use volt_zoo::instruct::{read_records, Encoder, InstructData, InstructDataConfig, Record, IGNORE_INDEX};
use volt_zoo::smollm2::{LoraSection, SmolLm2, SmolLm2Config};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf() -> PathBuf {
    let p = repo().join(".smollm2");
    assert!(p.is_file(), "{} is missing: scripts/setup links SmolLM2's GGUF file there", p.display());
    p
}

fn lora(targets: &[&str]) -> SmolLm2Config {
    SmolLm2Config {
        gguf: Some(gguf()),
        lora: Some(LoraSection {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }),
        lr: 1e-3,
        ..SmolLm2Config::lora()
    }
}

/// A few small Alpaca records in a JSON file under `dir`.
fn tiny_data(dir: &Path) -> PathBuf {
    let records: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            serde_json::json!({
                "instruction": format!("Add {i} and {}.", i + 1),
                "input": "",
                "output": format!("{i} + {} = {}", i + 1, 2 * i + 1),
            })
        })
        .collect();
    let path = dir.join("tiny.json");
    std::fs::write(&path, serde_json::to_string(&records).expect("json")).expect("write");
    path
}

fn data_config(json: &Path) -> InstructDataConfig {
    InstructDataConfig {
        json_path: Some(json.to_owned()),
        tokenizer: Some(gguf()),
        max_seq_length: Some(64),
        batch_size: 2,
        val_split_fraction: 0.3,
        prefetch: 0,
        ..InstructDataConfig::default()
    }
}

/// Gives every adapter tensor fixed, nonzero values of the size of LoRA's initial A.
fn set_adapters(model: &SmolLm2) {
    tch::no_grad(|| {
        for (name, mut t) in model.var_store().variables() {
            if name.contains(".lora_") {
                let phase = if name.contains(".lora_A.") { 0.5 } else { 1.5 };
                let values = (Tensor::arange(t.numel() as i64, (Kind::Float, Device::Cpu)) * 0.37 + phase)
                    .sin()
                    * 0.02;
                t.copy_(&values.view(t.size().as_slice()));
            }
        }
    });
}

fn snapshot(model: &SmolLm2, trainable: bool) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad() == trainable)
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn lora_steps_change_only_the_adapters_and_checkpoints_hold_only_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = SmolLm2::new(lora(&["q_proj", "v_proj"]), Device::Cpu).expect("model");
    let frozen = snapshot(&model, false);
    let adapters = snapshot(&model, true);
    // 30 blocks × (q, v) × (A, B); every base tensor is frozen.
    assert_eq!(adapters.len(), 120);
    assert!(adapters.iter().all(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B.")));
    assert!(frozen.iter().any(|(n, _)| n == "model.embed_tokens.weight"));
    assert!(frozen.iter().any(|(n, _)| n == "model.layers.0.self_attn.q_proj.weight"));
    let data = InstructData::new(data_config(&tiny_data(dir.path()))).expect("data");
    let config = TrainerConfig {
        max_steps: Some(3),
        num_sanity_val_steps: 0,
        limit_val_batches: BatchLimit::Count(0),
        seed: Some(0),
        default_root_dir: dir.path().to_owned(),
        ..TrainerConfig::default()
    }
    .quiet();
    let config = TrainerConfig { enable_checkpointing: true, ..config };
    let out = Trainer::new(config).expect("trainer").fit(&mut model, &data, None).expect("fit");
    for ((name, before), (_, after)) in frozen.iter().zip(snapshot(&model, false)) {
        assert!(before.equal(&after), "frozen {name} changed");
    }
    for (name, t) in model.var_store().variables() {
        assert!(t.requires_grad() || !t.grad().defined(), "frozen {name} got a gradient");
    }
    let after = snapshot(&model, true);
    let changed_b =
        adapters.iter().zip(&after).filter(|((n, b), (_, a))| n.contains(".lora_B.") && !b.equal(a)).count();
    assert_eq!(changed_b, 60, "every lora_B moved off zero");
    // The checkpoint: adapter tensors and their AdamW moments, no base weight.
    let last = out.last_checkpoint.expect("last checkpoint");
    let ckpt = volt_train::Checkpoint::load(&last).expect("load");
    let model_tensors: Vec<&String> =
        ckpt.tensors.iter().map(|(n, _)| n).filter(|n| n.starts_with("model.")).collect();
    assert_eq!(model_tensors.len(), 120, "{model_tensors:?}");
    assert!(model_tensors.iter().all(|n| n.contains(".lora_")));
    let optimizer: Vec<&String> =
        ckpt.tensors.iter().map(|(n, _)| n).filter(|n| n.starts_with("optimizer.")).collect();
    assert_eq!(optimizer.len(), 360, "exp_avg, exp_avg_sq and step of each adapter tensor only");
    assert!(optimizer.iter().all(|n| n.contains(".lora_")), "{optimizer:?}");
    let size = std::fs::metadata(&last).expect("size").len();
    assert!(size < 10_000_000, "a LoRA checkpoint of {size} bytes holds more than the adapters");
    assert_eq!(ckpt.state.module["base"]["sha256"].as_str().map(str::len), Some(64));
}

#[test]
fn the_loss_is_the_mean_over_answer_tokens_only() {
    let model = SmolLm2::new(lora(&["q_proj"]), Device::Cpu).expect("model");
    let encoder = Encoder::from_gguf(&gguf()).expect("encoder");
    let records = [
        Record::alpaca("Name a colour.", "", "Blue."),
        Record::alpaca("Say hi.", "politely", "Hello there, friend."),
    ];
    let samples: Vec<_> =
        records.iter().map(|r| encoder.encode(r, true, None).expect("encode").expect("an answer")).collect();
    for (ids, labels) in &samples {
        let prompt = labels.iter().take_while(|&&l| l == IGNORE_INDEX).count();
        assert!(prompt > 5 && prompt < ids.len() - 2, "prompt {prompt} of {}", ids.len());
        assert!(labels[prompt..].iter().zip(&ids[prompt..]).all(|(l, i)| l == i));
        // The answer ends with the template's end of turn, which is learnt.
        let im_end = encoder.tokenizer().token_to_id("<|im_end|>").map(i64::from);
        assert_eq!(ids[prompt..].iter().rev().nth(1).copied(), im_end, "answer, <|im_end|>, newline");
    }
    let (ids, labels) = volt_zoo::instruct::collate(samples.clone(), encoder.pad_id());
    let loss = tch::no_grad(|| model.model().loss(&ids, &labels, false)).expect("loss").double_value(&[]);
    // By hand: log-softmax of each sample's own (unpadded) logits at answer positions.
    let (mut total, mut count) = (0.0, 0usize);
    for (ids, labels) in &samples {
        let logits = tch::no_grad(|| model.model().forward(&Tensor::from_slice(ids).view([1, -1]), false));
        let logp = logits.squeeze_dim(0).log_softmax(-1, Kind::Double);
        // Position t predicts label t + 1.
        for (t, &label) in labels.iter().enumerate().skip(1) {
            if label != IGNORE_INDEX {
                total -= logp.double_value(&[(t - 1) as i64, label]);
                count += 1;
            }
        }
    }
    let by_hand = total / count as f64;
    assert!((loss - by_hand).abs() < 1e-4, "loss {loss}, by hand {by_hand} over {count} answer tokens");
    // Without masking the prompt counts too: a different, larger set of tokens.
    let unmasked = encoder.encode(&records[0], false, None).expect("encode").expect("an answer");
    assert!(unmasked.1.iter().all(|&l| l != IGNORE_INDEX));
}

/// Writes volt's logits for `ids` and asks transformers (with PEFT's adapter, or a
/// merged model folder) for its own; the largest difference.
fn python_diff(logits: &Tensor, ids: &[i64], extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("volt_logits.safetensors");
    volt_train::checkpoint::write_tensors(
        &file,
        &[("logits".into(), logits.shallow_clone()), ("ids".into(), Tensor::from_slice(ids).view([1, -1]))],
        Default::default(),
    )
    .expect("write logits");
    let out = Command::new(repo().join(".python"))
        .arg(repo().join("crates/zoo/tests/fixtures/peft_logits.py"))
        .arg(gguf())
        .arg(&file)
        .args(extra)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "peft_logits.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("json line")
}

#[test]
fn peft_and_transformers_load_volts_adapter_and_agree_on_the_logits() {
    volt_train::seed_everything(3);
    let model = SmolLm2::new(lora(&["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]), Device::Cpu)
        .expect("model");
    // A fresh adapter changes nothing (B is zero): give every adapter fixed values (not
    // the global generator's, which the file's other tests draw from in parallel).
    set_adapters(&model);
    let ids: Vec<i64> = vec![1, 9690, 198, 2683, 314, 253, 5356, 30, 2, 198, 504, 3458];
    let logits = tch::no_grad(|| model.model().forward(&Tensor::from_slice(&ids).view([1, -1]), false));
    let dir = tempfile::tempdir().expect("tempdir");
    let adapter = dir.path().join("adapter");
    model.save_adapter(&adapter).expect("save adapter");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["down_proj", "k_proj", "o_proj", "q_proj", "v_proj"])
    );
    let got = python_diff(&logits, &ids, &["--adapter", &adapter.display().to_string()]);
    assert_eq!(got["lora_tensors"], 300, "{got}");
    assert_eq!(got["shape"], serde_json::json!([1, ids.len(), 49152]));
    let diff = got["max_abs_diff"].as_f64().expect("number");
    assert!(diff < 1e-4, "volt and PEFT differ by {diff}");
    // The adapter matters: without it transformers' logits are far from volt's.
    let base = python_diff(&logits, &ids, &[]);
    assert!(base["max_abs_diff"].as_f64().expect("number") > 1e-2, "{base}");

    // Read back onto the base, it is the same model.
    let back = SmolLm2::from_adapter(&adapter, Some(&gguf()), Device::Cpu).expect("from adapter");
    let again = tch::no_grad(|| back.model().forward(&Tensor::from_slice(&ids).view([1, -1]), false));
    assert!(again.equal(&logits), "an adapter read back gives other logits");
    // Merged into a Hugging Face folder, transformers alone gives the same logits, and its
    // tokenizer (volt's tokenizer.json) the same ids as volt's, digits split.
    let merged = dir.path().join("SmolLM2-135M-Instruct");
    volt_zoo::smollm2::hf::write_model_folder(&back, &merged).expect("merge");
    // Spaces before digits too: a tokenizer without the digit split cuts them otherwise.
    let text = "In 2024, 12345 people ran 3.5 km.\nx\n    7.5 and  42";
    let got = python_diff(&logits, &ids, &["--model-dir", &merged.display().to_string(), "--text", text]);
    let diff = got["max_abs_diff"].as_f64().expect("number");
    // Merging rounds a different sum, (W + s·BA)x instead of Wx + s·B(Ax): float32 on logits
    // of magnitude ~20 differs in the 5th decimal (1.1e-4 seen with random adapters).
    assert!(diff < 2e-4, "volt and the merged model in transformers differ by {diff}");
    let encoder = Encoder::from_gguf(&gguf()).expect("encoder");
    let want: Vec<u32> = encoder.tokenizer().encode(text).expect("encode");
    assert_eq!(got["ids"], serde_json::json!(want), "{got}");
    assert!(got["chat"].as_str().is_some_and(|c| c.starts_with("<|im_start|>system")), "{got}");
    let err = volt_zoo::smollm2::hf::write_model_folder(&back, &merged).expect_err("exists");
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn the_base_model_agrees_with_transformers_reading_the_same_file() {
    let model = SmolLm2::new(SmolLm2Config { gguf: Some(gguf()), ..SmolLm2Config::full() }, Device::Cpu)
        .expect("model");
    assert!(
        model.var_store().variables().values().all(|t| t.requires_grad()),
        "full fine-tuning trains every weight"
    );
    let ids: Vec<i64> = vec![1, 4093, 314, 260, 3575, 282, 4649, 47];
    let logits = tch::no_grad(|| model.model().forward(&Tensor::from_slice(&ids).view([1, -1]), false));
    let got = python_diff(&logits, &ids, &[]);
    let diff = got["max_abs_diff"].as_f64().expect("number");
    assert!(diff < 1e-4, "volt and transformers differ by {diff}");
}

#[test]
fn bad_records_lengths_and_targets_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"c\", \"input\": \"d\"}\n",
    )
    .expect("write");
    let err = read_records(&bad).expect_err("missing output");
    assert!(err.contains("bad.jsonl: line 2: missing field `output`"), "{err}");
    let chat = dir.path().join("chat.jsonl");
    std::fs::write(&chat, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n").expect("write");
    let err = read_records(&chat).expect_err("no answer");
    assert!(err.contains("line 1") && err.contains("assistant"), "{err}");
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "[]").expect("write");
    assert!(read_records(&empty).expect_err("empty").contains("holds no records"));

    // Past the context (8192) without max_seq_length: refused, naming the record.
    let long = dir.path().join("long.json");
    let text = "word ".repeat(9000);
    std::fs::write(
        &long,
        serde_json::to_string(
            &serde_json::json!([{"instruction": "x", "output": "y"}, {"instruction": text, "output": "z"}]),
        )
        .expect("json"),
    )
    .expect("write");
    let err = InstructData::new(InstructDataConfig {
        max_seq_length: None,
        val_split_fraction: 0.0,
        ..data_config(&long)
    })
    .err()
    .expect("too long");
    assert!(err.contains("long.json: record 1") && err.contains("past the model's context of 8192"), "{err}");
    // With max_seq_length it is cut; a prompt that fills it leaves nothing to learn, so
    // that record is left out, and when none is left that is the error.
    let data = InstructData::new(InstructDataConfig {
        max_seq_length: Some(64),
        val_split_fraction: 0.0,
        ..data_config(&long)
    })
    .expect("one record left");
    assert_eq!((data.train().len(), data.val().len()), (1, 0));
    let only_long = dir.path().join("only_long.json");
    std::fs::write(
        &only_long,
        serde_json::to_string(&serde_json::json!([{"instruction": "word ".repeat(100), "output": "z"}]))
            .expect("json"),
    )
    .expect("write");
    let err = InstructData::new(InstructDataConfig {
        max_seq_length: Some(64),
        val_split_fraction: 0.0,
        ..data_config(&only_long)
    })
    .err()
    .expect("nothing to learn");
    assert!(err.contains("data.max_seq_length = 64") && err.contains("only_long.json: record 0"), "{err}");
    let err = InstructData::new(InstructDataConfig { max_seq_length: Some(9000), ..data_config(&long) })
        .err()
        .expect("past context");
    assert!(err.contains("data.max_seq_length = 9000"), "{err}");

    let err = SmolLm2::new(lora(&["q_proj", "query"]), Device::Cpu).err().expect("unknown target");
    assert!(
        err.contains("\"query\"")
            && err.contains("down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"),
        "{err}"
    );
    let err = SmolLm2::new(
        SmolLm2Config { gguf: Some(dir.path().join("nope.gguf")), ..SmolLm2Config::lora() },
        Device::Cpu,
    )
    .err()
    .expect("missing file");
    assert!(err.contains("model.gguf") && err.contains("nope.gguf"), "{err}");
}

#[test]
fn humaneval_ships_164_problems_and_every_fifth_is_held_back() {
    let problems = volt_zoo::humaneval::problems_in(&repo().join(".humaneval")).expect("problems");
    assert_eq!(problems.len(), 164);
    let held: Vec<usize> = problems.iter().filter(|p| p.held_back()).filter_map(|p| p.number()).collect();
    assert_eq!(held.len(), 33);
    assert_eq!(&held[..3], &[0, 5, 10]);
    assert_eq!(problems[0].entry_point, "has_close_elements");
    assert!(problems[0].prompt.starts_with("from typing import List"));
    assert!(problems[0].canonical_solution.starts_with("    for idx, elem in enumerate(numbers):"));
}

#[test]
fn bad_batches_are_errors_and_bf16_mixed_steps_train() {
    let model = SmolLm2::new(lora(&["q_proj"]), Device::Cpu).expect("model");
    let m = model.model();
    let one = Tensor::from_slice(&[5i64]).view([1, 1]);
    assert!(m.loss(&one, &one, false).expect_err("one position").contains("a batch of 1 positions"));
    let ids = Tensor::from_slice(&[5i64, 49152]).view([1, 2]);
    assert!(m.loss(&ids, &ids, false).expect_err("past the vocabulary").contains("0..49152"));
    let ids = Tensor::from_slice(&[5i64, 6]).view([1, 2]);
    let nothing = Tensor::from_slice(&[IGNORE_INDEX, IGNORE_INDEX]).view([1, 2]);
    assert!(m.loss(&ids, &nothing, false).expect_err("all masked").contains("no position"));

    // Two LoRA steps in bf16-mixed on the real model: finite, and the adapters moved.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = SmolLm2::new(lora(&["q_proj", "v_proj"]), Device::Cpu).expect("model");
    let data = InstructData::new(data_config(&tiny_data(dir.path()))).expect("data");
    let config = TrainerConfig {
        max_steps: Some(2),
        num_sanity_val_steps: 0,
        precision: volt_train::Precision::Bf16Mixed,
        seed: Some(0),
        default_root_dir: dir.path().to_owned(),
        ..TrainerConfig::default()
    }
    .quiet();
    let out = Trainer::new(config).expect("trainer").fit(&mut model, &data, None).expect("fit");
    let loss = out.metrics.get("train_loss").copied().unwrap_or(f64::NAN);
    assert!(loss.is_finite() && loss > 0.0, "{:?}", out.metrics);
    let moved = snapshot(&model, true)
        .iter()
        .filter(|(n, t)| n.contains(".lora_B.") && t.abs().sum(Kind::Float).double_value(&[]) > 0.0)
        .count();
    assert_eq!(moved, 60);
}

#[test]
fn an_adapter_on_some_layers_only_names_them_in_full_and_reads_back() {
    let model =
        SmolLm2::new(lora(&["model.layers.0.self_attn.q_proj", "v_proj"]), Device::Cpu).expect("model");
    set_adapters(&model);
    let dir = tempfile::tempdir().expect("tempdir");
    let adapter = dir.path().join("adapter");
    model.save_adapter(&adapter).expect("save");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["target_modules"], serde_json::json!(["model.layers.0.self_attn.q_proj", "v_proj"]));
    let back = SmolLm2::from_adapter(&adapter, Some(&gguf()), Device::Cpu).expect("reads back");
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, -1]);
    let (a, b) = tch::no_grad(|| (model.model().forward(&ids, false), back.model().forward(&ids, false)));
    assert!(a.equal(&b));
}
