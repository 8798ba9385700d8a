//! The server against real listeners on 127.0.0.1, hit by a real HTTP client.
mod common;

use common::{parse_prometheus, sample, Counter, Doubler};
use futures_util::StreamExt;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volt_serve::client::Client;
use volt_serve::{EndpointConfig, RunningServer, Server, ServerConfig};

fn config() -> ServerConfig {
    ServerConfig { port: 0, ..ServerConfig::default() }
}

async fn start(server: Server) -> (RunningServer, Client) {
    let running = server.bind().await.expect("bind");
    let client = Client::new(running.url());
    // Wait until every worker has finished setup.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.get("/health").await.expect("health").status != 200 {
        assert!(Instant::now() < deadline, "workers never became ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (running, client)
}

fn batched(max_batch_size: usize) -> EndpointConfig {
    EndpointConfig {
        max_batch_size,
        batch_timeout: Duration::from_millis(5),
        max_queue: 4096,
        ..EndpointConfig::at("/predict")
    }
}

/// Batches of more than one request, from the batch-size histogram.
fn multi_request_batches(metrics: &str) -> (f64, f64) {
    let s = parse_prometheus(metrics);
    let count = sample(&s, "volt_batch_size_count{route=\"/predict\"}");
    let singles = sample(&s, "volt_batch_size_bucket{le=\"1.0\",route=\"/predict\"}");
    (count, count - singles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_each_get_their_own_answer_in_batches() {
    let api = Doubler::default();
    let (server, client) =
        start(Server::new(config()).endpoint(batched(32), api.clone()).expect("endpoint")).await;
    let calls = (0..1000i64).map(|x| {
        let client = client.clone();
        tokio::spawn(async move { (x, client.post("/predict", &json!({"x": x})).await.expect("request")) })
    });
    for call in futures_util::future::join_all(calls).await {
        let (x, reply) = call.expect("task");
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.json(), json!({"y": 2 * x}));
    }
    assert_eq!(api.predicted.lock().expect("lock").len(), 1000);
    let metrics = client.get("/metrics").await.expect("metrics").text;
    let (batches, multi) = multi_request_batches(&metrics);
    assert!(batches < 1000.0, "{batches} predict calls for 1000 requests");
    assert!(multi > 0.0, "no batch larger than 1:\n{metrics}");
    let s = parse_prometheus(&metrics);
    assert_eq!(sample(&s, "volt_requests_total{route=\"/predict\",status=\"200\"}"), 1000.0);
    server.shutdown().await.expect("shutdown");

    // With max_batch_size = 1, never a batch larger than 1.
    let (server, client) =
        start(Server::new(config()).endpoint(batched(1), Doubler::default()).expect("ep")).await;
    let calls = (0..200i64).map(|x| {
        let client = client.clone();
        tokio::spawn(async move { client.post("/predict", &json!({"x": x})).await.expect("request").status })
    });
    assert!(futures_util::future::join_all(calls).await.into_iter().all(|s| s.expect("task") == 200));
    let (batches, multi) = multi_request_batches(&client.get("/metrics").await.expect("metrics").text);
    assert_eq!((batches, multi), (200.0, 0.0));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_overload_payload_limits_bad_json_and_unknown_routes() {
    let api = Doubler { delay: Duration::from_millis(300), ..Doubler::default() };
    let server = Server::new(ServerConfig {
        timeout: Duration::from_millis(100),
        max_payload_bytes: 1024,
        ..config()
    })
    .endpoint(EndpointConfig { max_queue: 2, ..EndpointConfig::at("/predict") }, api)
    .expect("endpoint");
    let (server, client) = start(server).await;

    let t = Instant::now();
    let r = client.post("/predict", &json!({"x": 1})).await.expect("request");
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(t.elapsed() < Duration::from_millis(290), "answered after {:?}", t.elapsed());
    assert_eq!(r.json()["error"]["type"], "timeout_error");

    let big = json!({"x": 1, "pad": "a".repeat(4096)});
    let r = client.post("/predict", &big).await.expect("request");
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]["message"].as_str().expect("message").contains("max_payload_bytes"));

    let r = client.post_raw("/predict", "{\"x\": 1,").await.expect("request");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().expect("message").contains("malformed JSON"), "{}", r.text);
    let r = client.post("/predict", &json!({"y": 1})).await.expect("request");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["message"], "`x`: is missing");
    let r = client.post("/predict", &json!({"x": "seven"})).await.expect("request");
    assert_eq!(r.status, 400);
    assert!(r.text.contains("`x`: expected an integer"), "{}", r.text);

    let r = client.get("/nope").await.expect("request");
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (404, json!(404)));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after_then_recovers() {
    let api = Doubler { delay: Duration::from_millis(100), ..Doubler::default() };
    let server = Server::new(config())
        .endpoint(EndpointConfig { max_queue: 2, ..EndpointConfig::at("/predict") }, api)
        .expect("endpoint");
    let (server, client) = start(server).await;
    let calls = (0..12i64).map(|x| {
        let client = client.clone();
        tokio::spawn(async move { client.post("/predict", &json!({"x": x})).await.expect("request") })
    });
    let replies: Vec<_> =
        futures_util::future::join_all(calls).await.into_iter().map(|r| r.expect("task")).collect();
    let rejected: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert!(!rejected.is_empty(), "no request was rejected");
    assert!(rejected.iter().all(|r| r.retry_after.as_deref() == Some("1")));
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 503));
    assert!(replies.iter().any(|r| r.status == 200));
    // Load gone: normal service.
    let r = client.post("/predict", &json!({"x": 21})).await.expect("request");
    assert_eq!((r.status, r.json()), (200, json!({"y": 42})));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_in_either_header_except_for_health() {
    let server = Server::new(ServerConfig { api_keys: vec!["s3cret".into()], ..config() })
        .endpoint(EndpointConfig::at("/predict"), Doubler::default())
        .expect("endpoint");
    let (server, open) = start(server).await;
    let body = json!({"x": 2});
    let r = open.post("/predict", &body).await.expect("request");
    assert_eq!(r.status, 401);
    assert!(r.text.contains("missing API key"));
    let wrong = Client::new(server.url()).with_api_key("s3cres");
    assert_eq!(wrong.post("/predict", &body).await.expect("request").status, 401);
    let bearer = Client::new(server.url()).with_api_key("s3cret");
    assert_eq!(bearer.post("/predict", &body).await.expect("request").json(), json!({"y": 4}));
    let via_header = reqwest::Client::new()
        .post(format!("{}/predict", server.url()))
        .header("X-API-Key", "s3cret")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(via_header.status().as_u16(), 200);
    assert_eq!(open.get("/metrics").await.expect("request").status, 401);
    assert_eq!(open.get("/info").await.expect("request").status, 401);
    assert_eq!(open.get("/health").await.expect("request").status, 200);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_is_never_predicted() {
    let api = Doubler { delay: Duration::from_millis(300), ..Doubler::default() };
    let (server, client) =
        start(Server::new(config()).endpoint(EndpointConfig::at("/predict"), api.clone()).expect("ep")).await;
    // The first request keeps the only worker busy for 300 ms.
    let busy = {
        let client = client.clone();
        tokio::spawn(async move { client.post("/predict", &json!({"x": 1})).await.expect("request") })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The second waits in the queue; its client gives up after 50 ms and closes the connection.
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(50)).build().expect("client");
    let gave_up = impatient.post(format!("{}/predict", server.url())).json(&json!({"x": 999})).send().await;
    assert!(gave_up.is_err(), "the request should time out on the client side");
    assert_eq!(busy.await.expect("task").status, 200);
    // A later request is served, so the worker has been past the abandoned one.
    assert_eq!(client.post("/predict", &json!({"x": 3})).await.expect("request").json(), json!({"y": 6}));
    let predicted = api.predicted.lock().expect("lock").clone();
    assert_eq!(predicted, vec![1, 3], "the abandoned request was predicted");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_predict_fails_only_its_batch_and_the_worker_recovers() {
    let api = Doubler::default();
    let (server, client) =
        start(Server::new(config()).endpoint(EndpointConfig::at("/predict"), api.clone()).expect("ep")).await;
    let r = client.post("/predict", &json!({"x": -1})).await.expect("request");
    assert_eq!(r.status, 500);
    assert!(r.text.contains("predict panicked: the model cannot take -1"), "{}", r.text);
    for x in 0..5 {
        let r = client.post("/predict", &json!({"x": x})).await.expect("request");
        assert_eq!((r.status, r.json()), (200, json!({"y": 2 * x})));
    }
    assert_eq!(client.get("/health").await.expect("health").status, 200);
    assert_eq!(api.setups.load(Ordering::SeqCst), 2, "setup ran again after the panic");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_a_worker_has_finished_setup() {
    let api = Doubler { setup_delay: Duration::from_millis(400), ..Doubler::default() };
    let server = Server::new(config())
        .endpoint(EndpointConfig { workers_per_device: 2, ..EndpointConfig::at("/predict") }, api.clone())
        .expect("endpoint")
        .bind()
        .await
        .expect("bind");
    let client = Client::new(server.url());
    let r = client.get("/health").await.expect("health");
    assert_eq!(r.status, 503);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.get("/health").await.expect("health").status, 200);
    assert_eq!(api.setups.load(Ordering::SeqCst), 2);
    let info = client.get("/info").await.expect("info").json();
    assert_eq!(info["endpoints"][0]["path"], "/predict");
    assert_eq!(info["endpoints"][0]["config"]["workers_per_device"], 2);
    server.shutdown().await.expect("shutdown");
}

/// Polls /health until it answers `status` (a wait, not a speed requirement).
async fn health_becomes(client: &Client, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = client.get("/health").await.expect("health");
        if r.status == status {
            return r.json();
        }
        assert!(Instant::now() < deadline, "/health stayed {} ({}), expected {status}", r.status, r.text);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_200_while_a_panicked_worker_sets_up_again_and_queued_requests_wait_for_it() {
    let api = Doubler { setup_delay: Duration::from_millis(400), ..Doubler::default() };
    let (server, client) =
        start(Server::new(config()).endpoint(EndpointConfig::at("/predict"), api.clone()).expect("ep")).await;
    let r = client.post("/predict", &json!({"x": -1})).await.expect("request");
    assert_eq!(r.status, 500, "{}", r.text);
    // The only worker is in setup again for 400 ms; a request sent now waits for it.
    let queued = {
        let client = client.clone();
        tokio::spawn(async move { client.post("/predict", &json!({"x": 4})).await.expect("request") })
    };
    for _ in 0..5 {
        let r = client.get("/health").await.expect("health");
        assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})), "during the re-setup");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = queued.await.expect("task");
    assert_eq!((r.status, r.json()), (200, json!({"y": 8})));
    assert_eq!(api.setups.load(Ordering::SeqCst), 2, "answered by the re-set-up worker");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_once_a_re_setup_fails_and_200_again_when_one_succeeds() {
    let budget = Arc::new(AtomicUsize::new(1));
    let api = Doubler { setup_budget: Some(Arc::clone(&budget)), ..Doubler::default() };
    let (server, client) =
        start(Server::new(config()).endpoint(EndpointConfig::at("/predict"), api.clone()).expect("ep")).await;
    assert_eq!(client.post("/predict", &json!({"x": -1})).await.expect("request").status, 500);
    // The re-setup fails (no budget): the endpoint has no serving worker.
    assert_eq!(health_becomes(&client, 503).await, json!({"status": "starting"}));
    budget.store(1, Ordering::SeqCst);
    assert_eq!(health_becomes(&client, 200).await, json!({"status": "ok"}));
    let r = client.post("/predict", &json!({"x": 5})).await.expect("request");
    assert_eq!((r.status, r.json()), (200, json!({"y": 10})));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_200_when_every_endpoint_has_a_serving_worker() {
    // Two workers, of which only one setup can ever succeed: the endpoint serves.
    let one = Doubler { setup_budget: Some(Arc::new(AtomicUsize::new(1))), ..Doubler::default() };
    let server = Server::new(config())
        .endpoint(EndpointConfig { workers_per_device: 2, ..EndpointConfig::at("/predict") }, one.clone())
        .expect("endpoint")
        .bind()
        .await
        .expect("bind");
    let client = Client::new(server.url());
    health_becomes(&client, 200).await;
    assert_eq!(client.post("/predict", &json!({"x": 1})).await.expect("request").json(), json!({"y": 2}));
    assert_eq!(one.setups.load(Ordering::SeqCst), 1);
    server.shutdown().await.expect("shutdown");

    // Two endpoints, one of which has no serving worker yet: not healthy.
    let never = Arc::new(AtomicUsize::new(0));
    let server = Server::new(config())
        .endpoint(EndpointConfig::at("/a"), Doubler::default())
        .and_then(|s| {
            s.endpoint(
                EndpointConfig::at("/b"),
                Doubler { setup_budget: Some(Arc::clone(&never)), ..Doubler::default() },
            )
        })
        .expect("endpoints")
        .bind()
        .await
        .expect("bind");
    let client = Client::new(server.url());
    assert_eq!(client.post("/a", &json!({"x": 3})).await.expect("request").json(), json!({"y": 6}));
    let r = client.get("/health").await.expect("health");
    assert_eq!((r.status, r.json()), (503, json!({"status": "starting"})), "/b has no serving worker");
    never.store(1, Ordering::SeqCst);
    health_becomes(&client, 200).await;
    assert_eq!(client.post("/b", &json!({"x": 4})).await.expect("request").json(), json!({"y": 8}));
    server.shutdown().await.expect("shutdown");
}

#[test]
fn colliding_paths_are_rejected_at_startup() {
    let e = Server::new(config())
        .endpoint(EndpointConfig::at("/health"), Doubler::default())
        .err()
        .expect("error");
    assert!(e.to_string().contains("collides with a built-in route"), "{e}");
    for path in ["/v1/models", "/v1/models/mine"] {
        let e = Server::new(config())
            .endpoint(EndpointConfig::at(path), Doubler::default())
            .err()
            .expect("error");
        assert!(e.to_string().contains("collides with a built-in route"), "{path}: {e}");
    }
    let e = Server::new(config())
        .endpoint(EndpointConfig::at("/a"), Doubler::default())
        .and_then(|s| s.endpoint(EndpointConfig::at("/a"), Doubler::default()))
        .err()
        .expect("error");
    assert!(e.to_string().contains("two endpoints share the path /a"), "{e}");
    let e = Server::new(config())
        .endpoint(EndpointConfig { max_batch_size: 0, ..EndpointConfig::at("/b") }, Doubler::default())
        .err()
        .expect("error");
    assert!(e.to_string().contains("max_batch_size"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_arrive_in_order_as_sse_or_ndjson() {
    let api = Counter { delay: Duration::from_millis(1), ..Counter::default() };
    let endpoint = EndpointConfig { stream: true, max_batch_size: 4, ..EndpointConfig::at("/stream") };
    let (server, client) = start(Server::new(config()).endpoint(endpoint, api).expect("endpoint")).await;
    let raw = reqwest::Client::new()
        .post(format!("{}/stream", server.url()))
        .json(&json!({"n": 5}))
        .send()
        .await
        .expect("request");
    assert_eq!(raw.headers()["content-type"], "text/event-stream");
    let text = raw.text().await.expect("body");
    let expected: String =
        (0..5).map(|i| format!("data: {{\"i\":{i}}}\n\n")).chain(["data: [DONE]\n\n".to_owned()]).collect();
    assert_eq!(text, expected);

    let ndjson = reqwest::Client::new()
        .post(format!("{}/stream", server.url()))
        .header("accept", "application/x-ndjson")
        .json(&json!({"n": 3}))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert_eq!(ndjson, "{\"i\":0}\n{\"i\":1}\n{\"i\":2}\n");

    let events: Vec<_> = client.stream("/stream", &json!({"n": 40})).await.expect("stream").collect().await;
    assert_eq!(events.len(), 41);
    assert!(events[..40].iter().enumerate().all(|(i, e)| e["i"] == i));
    assert_eq!(events[40], "[DONE]");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_stops_producing() {
    let api = Counter { delay: Duration::from_millis(10), ..Counter::default() };
    let endpoint = EndpointConfig { stream: true, ..EndpointConfig::at("/stream") };
    let (server, client) =
        start(Server::new(config()).endpoint(endpoint, api.clone()).expect("endpoint")).await;
    let mut events = client.stream("/stream", &json!({"n": 1000})).await.expect("stream");
    for i in 0..3 {
        assert_eq!(events.next().await.expect("event")["i"], i);
    }
    drop(events);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let produced = api.produced.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.produced.load(Ordering::SeqCst), produced, "still producing after the client left");
    assert!(produced < 100, "{produced} chunks produced for a client that read 3");
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_sent() {
    let (server, client) = start(
        Server::new(config()).endpoint(EndpointConfig::at("/predict"), Doubler::default()).expect("ep"),
    )
    .await;
    for x in 0..7 {
        client.post("/predict", &json!({"x": x})).await.expect("request");
    }
    for _ in 0..3 {
        client.post("/predict", &json!({"nope": 1})).await.expect("request");
    }
    client.get("/missing").await.expect("request");
    let text = client.get("/metrics").await.expect("metrics").text;
    let s = parse_prometheus(&text);
    assert_eq!(sample(&s, "volt_requests_total{route=\"/predict\",status=\"200\"}"), 7.0);
    assert_eq!(sample(&s, "volt_requests_total{route=\"/predict\",status=\"400\"}"), 3.0);
    assert_eq!(sample(&s, "volt_requests_total{route=\"unmatched\",status=\"404\"}"), 1.0);
    assert_eq!(sample(&s, "volt_errors_total{route=\"/predict\",kind=\"invalid_request_error\"}"), 3.0);
    assert_eq!(sample(&s, "volt_request_duration_seconds_count{route=\"/predict\"}"), 10.0);
    assert_eq!(sample(&s, "volt_predict_calls_total{route=\"/predict\"}"), 7.0);
    assert_eq!(sample(&s, "volt_queue_depth{route=\"/predict\"}"), 0.0);
    assert!(sample(&s, "volt_worker_busy_seconds_total{route=\"/predict\"}") > 0.0);
    assert!(text.contains("# TYPE volt_request_duration_seconds histogram"));
    server.shutdown().await.expect("shutdown");
}

#[test]
#[should_panic(expected = "no sample named")]
fn the_metrics_helper_fails_loudly_on_a_missing_series() {
    // An `== 0` assertion on a misspelt or never-created series must not pass silently.
    let s = parse_prometheus("volt_predict_calls_total{route=\"/a\"} 0\n");
    sample(&s, "volt_predict_calls_total{route=\"/b\"}");
}
