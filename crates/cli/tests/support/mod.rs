//! Running the `volt` binary from the CLI's tests, quietly, under a root folder.
#![allow(dead_code)]
pub mod llm;
pub mod studio;

use std::path::Path;
use std::process::{Command, Output};

/// `volt ARGS` with its runs under `root`, without progress bar or model summary.
pub fn volt(args: &[&str], root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(args)
        .args(["--trainer.default_root_dir", &root.display().to_string()])
        .args(["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
        .output()
        .expect("run volt")
}

/// What it printed on stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What it printed on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A checkpoint's model tensors (not the optimizer's), by name, as f32 values.
pub fn model_tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let ckpt = volt_train::Checkpoint::load(path).expect("load checkpoint");
    let mut out: Vec<(String, Vec<f32>)> = ckpt
        .tensors
        .iter()
        .filter(|(name, _)| !name.starts_with(volt_train::checkpoint::OPTIMIZER_PREFIX))
        .map(|(name, t)| (name.clone(), Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32")))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
