//! End to end through the `volt` binary: fit digits-mlp, serve the checkpoint, call it.
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn volt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_volt"))
}

#[test]
fn fit_then_serve_the_checkpoint_and_predict_digits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = volt()
        .args([
            "fit",
            "--model",
            "digits-mlp",
            "--seed",
            "0",
            "--trainer.max_epochs",
            "5",
            "--trainer.enable_progress_bar",
            "false",
        ])
        .arg("--trainer.default_root_dir")
        .arg(dir.path())
        .output()
        .expect("run volt fit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("fit finished: max_epochs=5 reached"), "{stdout}");
    let last = dir.path().join("lightning_logs/version_0/checkpoints/last.safetensors");
    assert!(stdout.contains(&last.display().to_string()), "{stdout}");

    let mut server = KillOnDrop(
        volt()
            .args(["serve", "--model", "digits-mlp", "--port", "0", "--checkpoint"])
            .arg(&last)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run volt serve"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let url = line.trim().strip_prefix("listening on ").expect("address line").to_owned();

    let runtime = tokio_runtime();
    let (correct, bad_length, bad_type) = runtime.block_on(async {
        let client = reqwest::Client::new();
        // Workers load the model in the background: wait for /health.
        for _ in 0..200 {
            if client.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let (_, val) = volt_zoo::digits::split();
        let all = volt_zoo::digits::all();
        let mut correct = 0;
        for &i in val.iter().take(40) {
            let pixels: Vec<f32> = all[i].pixels.iter().map(|p| p * 16.0).collect();
            let r: Value = client
                .post(format!("{url}/predict"))
                .json(&json!({"pixels": pixels}))
                .send()
                .await
                .expect("request")
                .json()
                .await
                .expect("json");
            let probs: Vec<f64> = r["probabilities"]
                .as_array()
                .expect("probabilities")
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            assert_eq!(probs.len(), 10);
            assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
            correct += usize::from(r["digit"] == all[i].label);
        }
        let bad_length = client
            .post(format!("{url}/predict"))
            .json(&json!({"pixels": [1, 2, 3]}))
            .send()
            .await
            .expect("request");
        let bad_length = (bad_length.status().as_u16(), bad_length.text().await.expect("body"));
        let bad_type = client
            .post(format!("{url}/predict"))
            .json(&json!({"pixels": "zero"}))
            .send()
            .await
            .expect("request");
        let bad_type = (bad_type.status().as_u16(), bad_type.text().await.expect("body"));
        (correct, bad_length, bad_type)
    });
    assert!(correct >= 36, "{correct} of 40 validation digits right after 5 epochs");
    assert_eq!(bad_length.0, 400);
    assert!(bad_length.1.contains("`pixels`: expected 64 numbers, got 3"), "{}", bad_length.1);
    assert_eq!(bad_type.0, 400);
    assert!(bad_type.1.contains("`pixels`: must be a list of 64 numbers"), "{}", bad_type.1);

    Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().expect("kill");
    assert!(server.0.wait().expect("wait").success());
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let out = volt().args(["fit", "--model", "no-such-model"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unknown model \"no-such-model\"; the zoo has: digits-mlp"));
    let out = volt()
        .args(["serve", "--model", "digits-mlp", "--checkpoint", "/nonexistent/x.safetensors"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/x.safetensors") && err.contains("file not found"), "{err}");
    let out = volt().args(["fit", "--model"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}

/// Ends the child even when an assertion fails first, so no server outlives the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}
