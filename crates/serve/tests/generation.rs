//! Generations (chat completions streamed token by token): their deadlines — the request
//! timeout cuts a stream unless the endpoint sets a first-chunk deadline and an idle
//! limit, which let a long generation that keeps producing go on and stop one that
//! stalls — and their metrics under vLLM's names.
mod common;

use serde_json::json;
use std::time::Duration;
use volt_serve::client::Client;
use volt_serve::openai::{ChatApi, ChatDelta, ChatRequest};
use volt_serve::{ApiError, Device, EndpointConfig, Server, ServerConfig, StreamOutput};

/// Sends `max_tokens` chunks "x", one every `gap` (after a `first` wait), the last with
/// `finish_reason` "length".
struct Slow {
    first: Duration,
    gap: Duration,
}

impl ChatApi for Slow {
    type Model = ();
    fn setup(&self, _: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn generate(
        &self,
        _: &mut (),
        requests: Vec<ChatRequest>,
        out: &mut StreamOutput<ChatDelta>,
    ) -> Result<(), ApiError> {
        std::thread::sleep(self.first);
        let n = requests[0].max_tokens.unwrap_or(1);
        for k in 0..n {
            if k > 0 {
                std::thread::sleep(self.gap);
            }
            let delta = ChatDelta {
                text: "x".into(),
                prompt_tokens: 1,
                finish_reason: (k + 1 == n).then(|| "length".to_owned()),
                tokens: 1,
                ..ChatDelta::default()
            };
            if !out.send(0, delta) {
                break;
            }
        }
        Ok(())
    }
    fn model_name(&self) -> String {
        "slow".into()
    }
}

async fn server(slow: Slow, first: Option<u64>, idle: Option<u64>) -> volt_serve::RunningServer {
    let endpoint = EndpointConfig {
        path: "/v1/chat/completions".into(),
        first_chunk_timeout: first.map(Duration::from_millis),
        idle_timeout: idle.map(Duration::from_millis),
        ..EndpointConfig::default()
    };
    Server::new(ServerConfig { port: 0, timeout: Duration::from_millis(400), ..ServerConfig::default() })
        .openai_chat(endpoint, slow)
        .expect("endpoint")
        .bind()
        .await
        .expect("bind")
}

fn ask(tokens: usize, stream: bool) -> serde_json::Value {
    json!({"messages": [{"role": "user", "content": "go"}], "max_tokens": tokens, "stream": stream})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_cuts_a_long_generation_when_no_stream_deadlines_are_set() {
    let s = server(Slow { first: Duration::ZERO, gap: Duration::from_millis(60) }, None, None).await;
    let c = Client::new(s.url());
    // 20 chunks × 60 ms = 1.2 s, past the 400 ms request timeout.
    let r = c.post("/v1/chat/completions", &ask(20, false)).await.expect("request");
    assert_eq!(r.status, 504, "{}", r.text);
    let r = c.post("/v1/chat/completions", &ask(20, true)).await.expect("request");
    assert_eq!(r.status, 200, "a stream has started by then");
    assert!(r.text.contains("deadline passed"), "the stream ends with the timeout: {}", r.text);
    assert!(!r.text.contains("\"length\""), "it never finished: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_that_keeps_producing_outlives_the_request_timeout() {
    let s =
        server(Slow { first: Duration::ZERO, gap: Duration::from_millis(60) }, Some(300), Some(250)).await;
    let c = Client::new(s.url());
    let r = c.post("/v1/chat/completions", &ask(20, false)).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "x".repeat(20));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let r = c.post("/v1/chat/completions", &ask(20, true)).await.expect("request");
    assert!(r.text.contains("\"finish_reason\":\"length\""), "{}", r.text);
    assert_eq!(r.text.matches("\"content\":\"x\"").count(), 20, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_generation_and_a_late_first_chunk_are_cut() {
    // A gap of 500 ms between chunks is past the 250 ms idle limit.
    let s =
        server(Slow { first: Duration::ZERO, gap: Duration::from_millis(500) }, Some(300), Some(250)).await;
    let c = Client::new(s.url());
    let r = c.post("/v1/chat/completions", &ask(3, false)).await.expect("request");
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(r.text.contains("250 ms"), "the error names the idle limit: {}", r.text);
    drop(s);
    // The first chunk 600 ms late, past the 300 ms first-chunk deadline.
    let s =
        server(Slow { first: Duration::from_millis(600), gap: Duration::ZERO }, Some(300), Some(250)).await;
    let c = Client::new(s.url());
    let r = c.post("/v1/chat/completions", &ask(2, true)).await.expect("request");
    assert!(r.text.contains("deadline passed"), "{}", r.text);
    assert!(!r.text.contains("\"length\""), "{}", r.text);
}

#[test]
fn stream_deadlines_of_zero_or_an_idle_limit_alone_are_refused() {
    let try_with = |first: Option<u64>, idle: Option<u64>| {
        Server::new(ServerConfig::default())
            .openai_chat(
                EndpointConfig {
                    path: "/v1/chat/completions".into(),
                    first_chunk_timeout: first.map(Duration::from_millis),
                    idle_timeout: idle.map(Duration::from_millis),
                    ..EndpointConfig::default()
                },
                Slow { first: Duration::ZERO, gap: Duration::ZERO },
            )
            .err()
            .map(|e| e.to_string())
    };
    assert!(try_with(Some(0), None).is_some_and(|e| e.contains("first_chunk_timeout")));
    assert!(try_with(Some(10), Some(0)).is_some_and(|e| e.contains("idle_timeout")));
    assert!(try_with(None, Some(10)).is_some_and(|e| e.contains("needs first_chunk_timeout")));
    assert!(try_with(Some(10), Some(10)).is_none());
    assert!(try_with(Some(10), None).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_report_time_to_first_token_gaps_and_tokens_under_vllm_names() {
    // First chunk after 150 ms, then 4 more 50 ms apart; each chunk one token, prompt 1.
    let s = server(
        Slow { first: Duration::from_millis(150), gap: Duration::from_millis(50) },
        Some(2000),
        Some(1000),
    )
    .await;
    let c = Client::new(s.url());
    for stream in [false, true] {
        let r = c.post("/v1/chat/completions", &ask(5, stream)).await.expect("request");
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let text = c.get("/metrics").await.expect("metrics").text;
    let samples = common::parse_prometheus(&text);
    let route = "{route=\"/v1/chat/completions\"}";
    let get = |name: &str| common::sample(&samples, &format!("{name}{route}"));
    assert_eq!(get("volt_time_to_first_token_seconds_count"), 2.0, "one first token per request");
    let ttft = get("volt_time_to_first_token_seconds_sum") / 2.0;
    assert!((0.15..1.0).contains(&ttft), "mean time to first token {ttft} s for a 150 ms first chunk");
    assert_eq!(get("volt_inter_token_latency_seconds_count"), 8.0, "4 gaps per request");
    let itl = get("volt_inter_token_latency_seconds_sum") / 8.0;
    assert!((0.045..0.5).contains(&itl), "mean gap {itl} s for chunks 50 ms apart");
    assert_eq!(get("volt_generation_tokens_total"), 10.0);
    assert_eq!(get("volt_prompt_tokens_total"), 2.0);
    // A model without an engine of its own leaves the engine gauges at zero.
    assert_eq!(get("volt_num_requests_running"), 0.0);
    assert_eq!(get("volt_queue_depth"), 0.0);
}
