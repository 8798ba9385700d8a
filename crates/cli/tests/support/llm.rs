//! Serving from the CLI's tests: `volt serve` on a free port, and requests to it.
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `volt serve` process, killed when dropped.
pub struct Served {
    /// The server process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Its chat completions URL.
    pub fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.url)
    }
}

/// Spawns `cmd` (a `volt serve ... --port 0`) and reads the address it prints in its
/// first line (`listening on URL`).
pub fn spawn(cmd: &mut Command) -> Served {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("run volt serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("no address: {line:?}"))
        .to_owned();
    Served { child, url }
}

/// Waits (up to 2 minutes) until the server's /health answers 200.
pub fn wait_healthy(served: &Served) {
    let health = format!("{}/health", served.url);
    let deadline = Instant::now() + Duration::from_secs(120);
    block_on(async {
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if client.get(&health).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server at {} never became healthy", served.url);
    });
}

/// Starts `volt serve ARGS` on a free port and waits for /health; it runs in the
/// repository's root, where scripts/setup links the bundled models.
pub fn serve(args: &[&str]) -> Served {
    let served = spawn(
        Command::new(env!("CARGO_BIN_EXE_volt"))
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
            .args(["serve", "--port", "0", "--num-threads", "2"])
            .args(args),
    );
    wait_healthy(&served);
    served
}

/// `f` on a two-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// POSTs `body`; returns its status and JSON body.
pub async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client.post(url).json(body).send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:.500}"));
    (status, v)
}
