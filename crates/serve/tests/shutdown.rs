//! SIGTERM with requests in flight: every one completes, then the process exits 0.
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use volt_serve::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let mut child = KillOnDrop(Some(
        Command::new(env!("CARGO_BIN_EXE_volt-echo"))
            .args(["--port", "0", "--delay-ms", "200"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn volt-echo"),
    ));
    let mut line = String::new();
    let stdout = child.0.as_mut().and_then(|c| c.stdout.take()).expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let url = line.trim().strip_prefix("listening on ").expect("address line").to_owned();
    let client = Client::new(url.clone());

    // Five requests, served one at a time (200 ms each): about a second of work in flight.
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.post("/predict", &json!({"input": i})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent_at = Instant::now();
    let pid = child.0.as_ref().map(|c| c.id()).expect("child");
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success());

    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.await.expect("task").expect("request completed");
        assert_eq!((reply.status, reply.json()), (200, json!({"output": i})), "request {i}");
    }
    let mut process = child.0.take().expect("child");
    let exit = tokio::task::spawn_blocking(move || process.wait()).await.expect("join").expect("wait");
    assert!(exit.success(), "exit status {exit}");
    assert!(sent_at.elapsed() >= Duration::from_millis(500), "the in-flight work was not waited for");
    assert!(Client::new(url).get("/health").await.is_err(), "nothing listens after exit");
}

/// Ends the child even when an assertion fails first, so no server outlives the test.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
