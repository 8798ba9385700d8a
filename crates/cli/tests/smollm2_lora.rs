//! `volt fit --model smollm2-lora` on the bundled HumanEval slice with the real SmolLM2
//! GGUF file: it writes PEFT's adapter files, resumes mid-epoch to the same adapters bit
//! for bit, refuses a checkpoint made on another base by name; `--model smollm2` trains
//! every weight.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Ten short Alpaca records (8 train, 2 validate) in `dir`.
fn records(dir: &Path) -> PathBuf {
    let records: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"instruction": format!("What is {i} squared?"), "output": format!("{i} squared is {}.", i * i)}))
        .collect();
    let path = dir.join("squares.json");
    std::fs::write(&path, serde_json::to_string(&records).expect("json")).expect("write");
    path
}

/// `volt fit --model MODEL` from the repository root (where scripts/setup links the
/// model and the data), runs under `root`; short samples, two per batch.
fn fit(model: &str, root: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt"))
        .current_dir(repo())
        .args(["fit", "--model", model, "--seed", "1"])
        .args(["--data.max_seq_length", "64", "--data.batch_size", "2", "--data.val_split_fraction", "0.2"])
        .args(["--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1"])
        .args(["--trainer.default_root_dir", &root.display().to_string()])
        .args(["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
        .args(extra)
        .output()
        .expect("run volt")
}

fn line_after(out: &Output, label: &str) -> PathBuf {
    let stdout = support::stdout(out);
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` in:\n{stdout}"));
    PathBuf::from(line.trim())
}

fn ok(out: &Output) {
    assert!(out.status.success(), "volt failed:\n{}\n{}", support::stdout(out), support::stderr(out));
}

#[test]
fn lora_fit_writes_peft_files_resumes_exactly_and_refuses_another_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = records(dir.path()).display().to_string();
    let fit = |model: &str, root: &Path, extra: &[&str]| {
        fit(model, root, &[&["--data.json_path", data.as_str()], extra].concat())
    };
    let straight = fit("smollm2-lora", &dir.path().join("straight"), &["--trainer.max_steps", "6"]);
    ok(&straight);
    let adapter = line_after(&straight, "adapter (PEFT):");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).expect("config"))
            .expect("json");
    assert_eq!(config["r"], 8);
    assert_eq!(config["lora_alpha"], 16);
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert!(adapter.join("adapter_model.safetensors").is_file());
    let stdout = support::stdout(&straight);
    assert!(stdout.contains("val_loss"), "{stdout}");

    // 3 steps (mid-epoch: 4 batches of 8 training records), then resume to 6.
    let first = fit("smollm2-lora", &dir.path().join("resumed"), &["--trainer.max_steps", "3"]);
    ok(&first);
    let last = line_after(&first, "last checkpoint:");
    let resumed = fit(
        "smollm2-lora",
        &dir.path().join("resumed"),
        &["--trainer.max_steps", "6", "--ckpt_path", &last.display().to_string()],
    );
    ok(&resumed);
    let want = support::model_tensors(&line_after(&straight, "last checkpoint:"));
    assert_eq!(want.len(), 120, "adapters only");
    assert_eq!(support::model_tensors(&line_after(&resumed, "last checkpoint:")), want, "bit for bit");

    // The adapters' meaning changes with alpha: a resume with another is refused.
    let changed = fit(
        "smollm2-lora",
        &dir.path().join("resumed"),
        &["--trainer.max_steps", "6", "--model.lora.alpha", "32", "--ckpt_path", &last.display().to_string()],
    );
    assert_eq!(changed.status.code(), Some(2), "{}", support::stderr(&changed));
    assert!(support::stderr(&changed)
        .contains("model.lora.alpha = 32, but the checkpoint's adapters were trained with 16"));

    // `volt lora merge`: base + adapter into a Hugging Face folder.
    let merged = dir.path().join("merged");
    let merge = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_volt"))
            .current_dir(repo())
            .args(["lora", "merge"])
            .args(extra)
            .output()
            .expect("run volt")
    };
    let adapter_arg = adapter.display().to_string();
    let out = merge(&["--adapter", &adapter_arg, "--out", &merged.display().to_string()]);
    ok(&out);
    for file in [
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "{file} missing");
    }
    let hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).expect("config"))
            .expect("json");
    assert_eq!((hf["num_hidden_layers"].as_u64(), hf["num_key_value_heads"].as_u64()), (Some(30), Some(3)));
    let again = merge(&["--adapter", &adapter_arg, "--out", &merged.display().to_string()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(support::stderr(&again).contains("exists"), "{}", support::stderr(&again));

    // Another base: the same file with one byte of its name changed.
    let mut bytes = std::fs::read(repo().join(".smollm2")).expect("gguf");
    let at = bytes.windows(7).position(|w| w == b"Smollm2").expect("general.name in the header");
    bytes[at + 6] = b'3';
    let other = dir.path().join("other.gguf");
    std::fs::write(&other, bytes).expect("write");
    let refused = fit(
        "smollm2-lora",
        &dir.path().join("other"),
        &[
            "--trainer.max_steps",
            "6",
            "--model.gguf",
            &other.display().to_string(),
            "--ckpt_path",
            &last.display().to_string(),
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", support::stderr(&refused));
    let err = support::stderr(&refused);
    assert!(
        err.contains("trained on base SmolLM2-135M-Instruct.Q4_1.gguf")
            && err.contains("this run's base is other.gguf"),
        "{err}"
    );
    let other_arg = other.display().to_string();
    let m2 = dir.path().join("m2").display().to_string();
    let refused = merge(&["--adapter", &adapter_arg, "--gguf", &other_arg, "--out", &m2]);
    assert_eq!(refused.status.code(), Some(2), "{}", support::stderr(&refused));
    let err = support::stderr(&refused);
    assert!(
        err.contains("trained on base SmolLM2-135M-Instruct.Q4_1.gguf") && err.contains("not on other.gguf"),
        "{err}"
    );
    assert!(!dir.path().join("m2").exists());
}

#[test]
fn full_fine_tuning_trains_every_weight_and_print_config_shows_each_models_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = records(dir.path()).display().to_string();
    let out = fit(
        "smollm2",
        dir.path(),
        &["--data.json_path", &data, "--trainer.max_steps", "2", "--trainer.enable_checkpointing", "false"],
    );
    ok(&out);
    let stdout = support::stdout(&out);
    assert!(stdout.contains("2 steps at"), "{stdout}");
    assert!(!stdout.contains("adapter"), "{stdout}");

    let shown = |model: &str| {
        let out = fit(model, dir.path(), &["--print_config"]);
        ok(&out);
        support::stdout(&out)
    };
    let lora = shown("smollm2-lora");
    assert!(
        lora.contains("[model.lora]") && lora.contains("r = 8") && lora.contains("lr = 0.0002"),
        "{lora}"
    );
    let full = shown("smollm2");
    assert!(!full.contains("[model.lora]") && full.contains("lr = 0.00005"), "{full}");
}

#[test]
fn bad_lora_settings_exit_2_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, want) in [
        (vec!["--model.lora.r", "0"], "lora.r = 0"),
        (vec!["--model.lora.targets", "[\"query\"]"], "no linear layer is named \"query\""),
        (vec!["--data.json_path", "/nonexistent.json"], "data.json_path = /nonexistent.json"),
        (vec!["--data.val_split_fraction", "1.0"], "data.val_split_fraction = 1"),
    ] {
        let out = fit("smollm2-lora", dir.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", support::stderr(&out));
        assert!(support::stderr(&out).contains(want), "{args:?}: {}", support::stderr(&out));
    }
}

#[test]
fn the_bundled_humaneval_slice_trains_at_its_real_lengths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fit(
        "smollm2-lora",
        dir.path(),
        &["--data.max_records", "10", "--data.max_seq_length", "512", "--trainer.fast_dev_run", "true"],
    );
    ok(&out);
    let stdout = support::stdout(&out);
    assert!(stdout.contains("1 steps at"), "{stdout}");
    let loss = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("val_loss: "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no val_loss in:\n{stdout}"));
    // Code bodies under a pretrained model: well below a uniform guess (ln 49152 ≈ 10.8).
    assert!((0.1..5.0).contains(&loss), "val_loss {loss}");
}
