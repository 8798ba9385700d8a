//! The echo server of the serving benchmark and of the shutdown test:
//! `{"input": x}` → `{"output": x}`.
//!
//! volt-echo [--port N] [--delay-ms N] [--bare]
//!
//! `--bare` serves the same JSON from a plain axum handler, with none of volt's layers,
//! as the benchmark's floor. It prints `listening on http://ADDR` once it accepts.
use serde_json::{json, Value};
use std::time::Duration;
use volt_serve::{ApiError, Device, EndpointConfig, InferenceApi, Server, ServerConfig};

struct Echo {
    delay: Duration,
}

impl InferenceApi for Echo {
    type Model = ();
    type Input = Value;
    type Output = Value;
    fn setup(&self, _: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn decode_request(&self, body: &Value) -> Result<Value, ApiError> {
        body.get("input").cloned().ok_or_else(|| ApiError::field("input", "is missing"))
    }
    fn predict(&self, _: &mut (), inputs: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        std::thread::sleep(self.delay);
        Ok(inputs)
    }
    fn encode_response(&self, output: Value) -> Result<Value, ApiError> {
        Ok(json!({"output": output}))
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = arg("--port").map_or(Ok(8000), |p| p.parse())?;
    let delay = Duration::from_millis(arg("--delay-ms").map_or(Ok(0), |d| d.parse())?);
    let bare = std::env::args().any(|a| a == "--bare");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        if bare {
            let app = axum::Router::new().route(
                "/predict",
                axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                    axum::Json(json!({"output": body.get("input").cloned().unwrap_or(Value::Null)}))
                }),
            );
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            println!("listening on http://{}", listener.local_addr()?);
            axum::serve(listener, app).await?;
            return Ok(());
        }
        let server = Server::new(ServerConfig { port, ..ServerConfig::default() })
            .endpoint(EndpointConfig::at("/predict"), Echo { delay })?;
        let running = server.bind().await?;
        println!("listening on {}", running.url());
        running.until_signal().await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
