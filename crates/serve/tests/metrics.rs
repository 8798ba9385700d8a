//! `/metrics` for streamed responses: timed and counted when the body ends (or is
//! dropped because the client left), with mid-stream errors counted by type.
mod common;

use common::{parse_prometheus, sample, sample_if_any, Counter};
use futures_util::StreamExt;
use serde_json::json;
use std::time::{Duration, Instant};
use volt_serve::client::Client;
use volt_serve::{EndpointConfig, RunningServer, Server, ServerConfig};

async fn stream_server(timeout: Duration) -> (RunningServer, Client) {
    let api = Counter { delay: Duration::from_millis(10), ..Counter::default() };
    let running = Server::new(ServerConfig { port: 0, timeout, ..ServerConfig::default() })
        .endpoint(EndpointConfig { stream: true, ..EndpointConfig::at("/stream") }, api)
        .expect("endpoint")
        .bind()
        .await
        .expect("bind");
    let client = Client::new(running.url());
    (running, client)
}

/// The samples of /metrics once `ready` holds of them (a wait for the server to see a
/// body end, not a speed requirement).
async fn metrics_once(client: &Client, ready: impl Fn(&[(String, f64)]) -> bool) -> Vec<(String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = client.get("/metrics").await.expect("metrics").text;
        let s = parse_prometheus(&text);
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "metrics never got there:\n{text}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const COUNT: &str = "volt_request_duration_seconds_count{route=\"/stream\"}";
const SUM: &str = "volt_request_duration_seconds_sum{route=\"/stream\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_timed_from_request_to_the_end_of_its_body() {
    let (server, client) = stream_server(Duration::from_secs(30)).await;
    // 20 chunks, 10 ms apart: the body cannot end before 200 ms have passed.
    let events: Vec<_> = client.stream("/stream", &json!({"n": 20})).await.expect("stream").collect().await;
    assert_eq!(events.len(), 21);
    let s = metrics_once(&client, |s| sample_if_any(s, COUNT).is_some_and(|n| n >= 1.0)).await;
    assert_eq!(sample(&s, COUNT), 1.0, "one stream, timed once");
    assert!(sample(&s, SUM) >= 0.2, "recorded {} s for a stream of at least 0.2 s", sample(&s, SUM));
    assert_eq!(sample(&s, "volt_requests_total{route=\"/stream\",status=\"200\"}"), 1.0);
    assert_eq!(sample_if_any(&s, "volt_errors_total{route=\"/stream\",kind=\"server_error\"}"), None);
    assert_eq!(sample(&s, "volt_stream_disconnects_total{route=\"/stream\"}"), 0.0);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_or_the_deadline_mid_stream_counts_as_that_error() {
    let (server, client) = stream_server(Duration::from_millis(600)).await;
    let events: Vec<_> =
        client.stream("/stream", &json!({"n": 10, "fail_after": 3})).await.expect("stream").collect().await;
    assert_eq!(events.len(), 5, "3 chunks, the error, [DONE]: {events:?}");
    assert_eq!(events[3]["error"]["type"], "server_error");
    // Far more chunks than the 600 ms deadline allows.
    let events: Vec<_> = client.stream("/stream", &json!({"n": 1000})).await.expect("stream").collect().await;
    assert_eq!(events[events.len() - 2]["error"]["type"], "timeout_error", "{:?}", events.last());
    let s = metrics_once(&client, |s| sample_if_any(s, COUNT).is_some_and(|n| n >= 2.0)).await;
    assert_eq!(sample(&s, COUNT), 2.0);
    assert_eq!(sample(&s, "volt_errors_total{route=\"/stream\",kind=\"server_error\"}"), 1.0);
    assert_eq!(sample(&s, "volt_errors_total{route=\"/stream\",kind=\"timeout_error\"}"), 1.0);
    assert_eq!(sample(&s, "volt_requests_total{route=\"/stream\",status=\"500\"}"), 1.0);
    assert_eq!(sample(&s, "volt_requests_total{route=\"/stream\",status=\"504\"}"), 1.0);
    assert_eq!(sample_if_any(&s, "volt_requests_total{route=\"/stream\",status=\"200\"}"), None);
    assert!(sample(&s, SUM) >= 0.6, "the deadline stream alone lasted 0.6 s; recorded {}", sample(&s, SUM));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_leaves_is_timed_when_its_body_is_dropped() {
    let (server, client) = stream_server(Duration::from_secs(30)).await;
    let mut events = client.stream("/stream", &json!({"n": 1000})).await.expect("stream");
    for i in 0..3 {
        assert_eq!(events.next().await.expect("event")["i"], i);
    }
    drop(events);
    let gone = "volt_stream_disconnects_total{route=\"/stream\"}";
    let s = metrics_once(&client, |s| {
        sample_if_any(s, gone).is_some_and(|n| n >= 1.0) && sample_if_any(s, COUNT).is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(sample(&s, gone), 1.0);
    assert_eq!(sample(&s, COUNT), 1.0);
    assert!(sample(&s, SUM) >= 0.02, "3 chunks 10 ms apart were read; recorded {}", sample(&s, SUM));
    assert_eq!(sample(&s, "volt_requests_total{route=\"/stream\",status=\"200\"}"), 1.0);
    server.shutdown().await.expect("shutdown");
}
