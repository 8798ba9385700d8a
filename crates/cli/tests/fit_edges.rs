//! `volt fit` where new users go past the happy path: runs without validation, fast_dev_run,
//! checkpointing switched off, out-of-range numbers, and problems found mid-run (exit 1,
//! what was saved stays) against problems found before training (exit 2, nothing written).
mod support;

use std::path::{Path, PathBuf};
use support::{stderr, stdout, volt};

/// Every file under `dir`, recursively, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).to_owned());
            }
        }
    }
    out.sort();
    out
}

fn checkpoints(root: &Path) -> Vec<String> {
    files(root)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn a_run_without_validation_keeps_its_work_and_warns_about_the_monitor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    // digits-mlp's ModelCheckpoint monitors val_acc, which no validation will log.
    let o = volt(
        &["fit", "--model", "digits-mlp", "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0"],
        &root,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("val_acc"), "a warning names the monitor: {}", stderr(&o));
    assert_eq!(checkpoints(&root), ["lightning_logs/version_0/checkpoints/last.safetensors"], "last only");
    assert!(stdout(&o).contains("90 steps"), "{}", stdout(&o));

    // char-gpt monitors val_loss; the same rule holds.
    let o = volt(
        &["fit", "--model", "char-gpt", "--trainer.max_steps", "6", "--trainer.limit_val_batches", "0"],
        &root,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(checkpoints(&root).contains(&"char-gpt/version_0/checkpoints/last.safetensors".to_owned()));
}

#[test]
fn step_checkpoints_before_the_first_validation_skip_top_k_but_save_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(
        &[
            "fit",
            "--model",
            "digits-mlp",
            "--trainer.max_steps",
            "30",
            "--callbacks.model_checkpoint.every_n_train_steps",
            "20",
        ],
        &root,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("val_acc"), "{}", stderr(&o));
    let names = checkpoints(&root);
    assert!(names.contains(&"lightning_logs/version_0/checkpoints/last.safetensors".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("val_acc=")), "no top-k without the metric: {names:?}");
}

#[test]
fn a_monitor_missing_after_validation_ran_fails_the_run_with_exit_1_and_keeps_what_was_saved() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(
        &[
            "fit",
            "--model",
            "digits-mlp",
            "--trainer.max_epochs",
            "3",
            "--callbacks.model_checkpoint.monitor",
            "val_accuracy",
            "--callbacks.model_checkpoint.filename",
            "{epoch}",
        ],
        &root,
    );
    assert_eq!(o.status.code(), Some(1), "a problem found while training is a run failure: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("val_accuracy") && err.contains("val_acc"), "names it and what exists: {err}");
    assert!(root.join("lightning_logs/version_0/metrics.csv").exists(), "the logs stay");
}

#[test]
fn what_can_be_checked_before_training_is_checked_before_training() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    for (args, names) in [
        (vec!["--callbacks.model_checkpoint.filename", "{epoch"], "filename"),
        (vec!["--callbacks.model_checkpoint.filename", "{val_acc:.x}"], "filename"),
        (vec!["--callbacks.model_checkpoint.save_top_k", "-2"], "save_top_k"),
        (vec!["--optimizer.lr", "-1"], "optimizer.lr"),
        (vec!["--optimizer.lr", "nan"], "optimizer.lr"),
        (vec!["--optimizer.betas", "[0.9, 1.5]"], "optimizer.betas"),
        (vec!["--optimizer.eps", "-1e-8"], "optimizer.eps"),
        (vec!["--optimizer.weight_decay", "-0.1"], "optimizer.weight_decay"),
        (vec!["--optimizer.name", "sgd", "--optimizer.momentum", "-0.5"], "optimizer.momentum"),
        (vec!["--optimizer.name", "sgd", "--optimizer.nesterov", "true"], "nesterov"),
        (vec!["--trainer.val_check_interval", "0"], "val_check_interval"),
        (vec!["--trainer.val_check_interval", "0.0"], "val_check_interval"),
        (vec!["--trainer.val_check_interval", "1000"], "val_check_interval"),
        (vec!["--trainer.gradient_clip_val", "-1"], "gradient_clip_val"),
        (vec!["--trainer.num_threads", "0"], "num_threads"),
        (
            vec!["--trainer.check_val_every_n_epoch", "none", "--trainer.val_check_interval", "0.5"],
            "val_check_interval",
        ),
        (
            vec![
                "--callbacks.early_stopping.monitor",
                "val_loss",
                "--callbacks.early_stopping.min_delta",
                "nan",
            ],
            "min_delta",
        ),
    ] {
        let mut all = vec!["fit", "--model", "digits-mlp", "--trainer.max_epochs", "1"];
        all.extend(&args);
        let o = volt(&all, &root);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(names), "{args:?} should name {names}: {}", stderr(&o));
        assert!(files(&root).is_empty(), "{args:?} wrote {:?}", files(&root));
    }
}

#[test]
fn fast_dev_run_trains_and_validates_one_batch_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(&["fit", "--model", "digits-mlp", "--trainer.fast_dev_run", "true"], &root);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("1 steps"), "{}", stdout(&o));
    assert!(files(&root).is_empty(), "no checkpoints or logs: {:?}", files(&root));
    let o = volt(&["fit", "--model", "char-gpt", "--trainer.fast_dev_run", "3"], &root);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("3 steps"), "{}", stdout(&o));
    assert!(files(&root).is_empty(), "{:?}", files(&root));
}

#[test]
fn checkpointing_off_writes_no_checkpoint_and_refuses_an_explicit_model_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(
        &[
            "fit",
            "--model",
            "digits-mlp",
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_checkpointing",
            "false",
        ],
        &root,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(checkpoints(&root).is_empty(), "{:?}", checkpoints(&root));
    assert!(root.join("lightning_logs/version_0/metrics.csv").exists(), "logging is still on");
    assert!(!stdout(&o).contains("checkpoint:"), "{}", stdout(&o));

    let other = dir.path().join("other");
    let o = volt(
        &[
            "fit",
            "--model",
            "digits-mlp",
            "--trainer.enable_checkpointing",
            "false",
            "--callbacks.model_checkpoint.save_top_k",
            "3",
        ],
        &other,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("enable_checkpointing"), "{}", stderr(&o));
    assert!(files(&other).is_empty());
}

#[test]
fn check_val_every_n_epoch_none_is_accepted_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(
        &[
            "fit",
            "--model",
            "digits-mlp",
            "--trainer.check_val_every_n_epoch",
            "none",
            "--trainer.val_check_interval",
            "60",
            "--print_config",
        ],
        &root,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let printed: toml::Table = toml::from_str(&stdout(&o)).expect("TOML");
    assert_eq!(printed["trainer"]["check_val_every_n_epoch"].as_str(), Some("none"));
    assert_eq!(printed["trainer"]["val_check_interval"].as_integer(), Some(60));
}
