//! LightningCLI behaviour of `volt fit | validate`: config files, overrides,
//! --print_config, errors with exit code 2 that write nothing, resume and "best".
use std::path::Path;
use std::process::{Command, Output};

fn volt(args: &[&str], root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(args)
        .args(["--trainer.default_root_dir", &root.display().to_string()])
        .output()
        .expect("run volt")
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn files_then_overrides_resolve_in_order_and_print_config_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.yaml");
    std::fs::write(&a, "seed = 3\n[trainer]\nmax_epochs = 5\nlog_every_n_steps = 7\n[model]\nhidden = 64\n")
        .expect("write");
    std::fs::write(&b, "trainer:\n  max_epochs: 9\ndata:\n  batch_size: 16\noptimizer:\n  lr: 0.01\n")
        .expect("write");
    let root = dir.path().join("runs");
    let o = volt(
        &[
            "fit",
            "--model",
            "digits-mlp",
            "--config",
            a.to_str().expect("utf8"),
            "--config",
            b.to_str().expect("utf8"),
            "--model.hidden",
            "512",
            "--optimizer.lr=3e-4",
            "--print_config",
        ],
        &root,
    );
    let (printed, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: toml::Table = toml::from_str(&printed).expect("TOML");
    assert_eq!(v["seed"].as_integer(), Some(3));
    assert_eq!(v["trainer"]["max_epochs"].as_integer(), Some(9), "the later file wins");
    assert_eq!(v["trainer"]["log_every_n_steps"].as_integer(), Some(7), "tables merge");
    assert_eq!(v["model"]["hidden"].as_integer(), Some(512), "overrides win over files");
    assert_eq!(v["optimizer"]["lr"].as_float(), Some(3e-4));
    assert_eq!(v["data"]["batch_size"].as_integer(), Some(16));
    assert!(!root.exists(), "--print_config writes nothing");

    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).expect("write");
    let o = volt(
        &["fit", "--model", "digits-mlp", "--config", again.to_str().expect("utf8"), "--print_config"],
        &root,
    );
    assert_eq!(text(&o).0, printed, "the printed configuration reproduces itself");
}

#[test]
fn unknown_keys_wrong_types_and_missing_files_exit_2_and_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(&["fit", "--model", "digits-mlp", "--trainer.max_epoch", "3"], &root);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(
        err.contains("unknown key `trainer.max_epoch`; valid keys of [trainer]: max_epochs, max_steps,"),
        "{err}"
    );
    assert!(err.contains("did you mean `trainer.max_epochs`?"), "{err}");

    let o = volt(&["fit", "--model", "digits-mlp", "--callbacks.early_stopping.patienc", "3"], &root);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("unknown key `callbacks.early_stopping.patienc`"), "{err}");
    assert!(err.contains("did you mean `callbacks.early_stopping.patience`?"), "{err}");

    let o = volt(&["fit", "--model", "digits-mlp", "--trainer.max_epochs", "many"], &root);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o).1;
    assert!(err.contains("`trainer.max_epochs` = \"many\": expected"), "{err}");

    let o = volt(&["fit", "--model", "digits-mlp", "--data.batch_size", "-4"], &root);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("`data.batch_size` = -4"), "{}", text(&o).1);

    let missing = dir.path().join("nope.toml");
    let o = volt(&["fit", "--model", "digits-mlp", "--config", missing.to_str().expect("utf8")], &root);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o).1.contains(&format!("config file {}: file not found", missing.display())),
        "{}",
        text(&o).1
    );

    let o = volt(&["validate", "--model", "digits-mlp", "--ckpt_path", "/no/such.safetensors"], &root);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("/no/such.safetensors: file not found"), "{}", text(&o).1);
    assert_eq!(files_under(&root), 0, "nothing was written");
}

#[test]
fn fit_resumes_from_last_and_validate_best_reports_the_recorded_metric() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let cfg = dir.path().join("fit.toml");
    std::fs::write(
        &cfg,
        "[trainer]\nenable_progress_bar = false\nenable_model_summary = false\n\
         [callbacks.model_checkpoint]\nmonitor = \"val_acc\"\nmode = \"max\"\nfilename = \"{epoch}-{val_acc:.4f}\"\nsave_last = true\n",
    )
    .expect("write");
    let c = cfg.to_str().expect("utf8");

    // "last" with no previous run: a warning and a fresh start.
    let o = volt(
        &["fit", "--model", "digits-mlp", "--config", c, "--trainer.max_epochs", "2", "--ckpt_path", "last"],
        &root,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("found no checkpoint") && err.contains("starting from scratch"), "{err}");
    assert!(out.contains("90 steps"), "{out}");
    assert!(root.join("lightning_logs/version_0/config.toml").exists());

    let o = volt(
        &["fit", "--model", "digits-mlp", "--config", c, "--trainer.max_epochs", "4", "--ckpt_path", "last"],
        &root,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("fit finished: max_epochs=4 reached"), "{out}");
    assert!(out.contains("90 steps"), "epochs 2 and 3 only: {out}");
    assert!(out.contains("lightning_logs/version_0"), "continued in its version folder: {out}");

    let best = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("best checkpoint: "))
        .expect("a best checkpoint")
        .to_owned();
    let recorded =
        best.rsplit("val_acc=").next().and_then(|s| s.strip_suffix(".safetensors")).expect("metric in name");
    let o = volt(&["validate", "--model", "digits-mlp", "--config", c, "--ckpt_path", "best"], &root);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.lines().any(|l| l == format!("val_acc: {recorded}")),
        "validate says {out}, the name says {recorded}"
    );
}

#[test]
fn the_readme_main_job_runs_on_a_short_setting() {
    // README: `cargo run --release -- fit --model digits-mlp`, here with one epoch.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = volt(&["fit", "--model", "digits-mlp", "--trainer.max_epochs", "1"], dir.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("fit finished: max_epochs=1 reached"), "{out}");
    assert!(out.contains("last checkpoint:"), "{out}");
    assert!(dir.path().join("lightning_logs/version_0/metrics.csv").exists());
}
