//! The OpenAI-compatible specs, read by the official `openai` Python client.
mod common;

use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use volt_serve::client::Client;
use volt_serve::openai::{ChatApi, ChatDelta, ChatRequest, Embedding, EmbeddingsApi};
use volt_serve::{ApiError, Device, EndpointConfig, Server, ServerConfig, StreamOutput};

/// Answers with the last user message reversed, one character per token.
struct Reverser;

impl ChatApi for Reverser {
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
        for (i, r) in requests.iter().enumerate() {
            let prompt = r.messages.last().map(|m| m.content.clone()).unwrap_or_default();
            let answer: Vec<char> = prompt.chars().rev().collect();
            let limit = r.max_tokens.unwrap_or(usize::MAX);
            for (n, c) in answer.iter().enumerate() {
                let last = n + 1 == answer.len() || n + 1 == limit;
                let finish =
                    last.then(|| if n + 1 == limit && n + 1 < answer.len() { "length" } else { "stop" });
                let delta = ChatDelta {
                    text: c.to_string(),
                    prompt_tokens: prompt.chars().count(),
                    finish_reason: finish.map(str::to_owned),
                    tokens: 1,
                    ..ChatDelta::default()
                };
                if !out.send(i, delta) || last {
                    break;
                }
            }
        }
        Ok(())
    }
    fn model_name(&self) -> String {
        "reverser".into()
    }
}

/// A 3-number "embedding": length, vowels, spaces; tokens = words.
struct Bag;

impl EmbeddingsApi for Bag {
    type Model = ();
    fn setup(&self, _: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn embed(&self, _: &mut (), texts: Vec<String>) -> Result<Vec<Embedding>, ApiError> {
        Ok(texts
            .iter()
            .map(|t| Embedding {
                vector: vec![
                    t.len() as f32,
                    t.chars().filter(|c| "aeiou".contains(*c)).count() as f32,
                    t.matches(' ').count() as f32,
                ],
                tokens: t.split_whitespace().count(),
            })
            .collect())
    }
    fn model_name(&self) -> String {
        "bag".into()
    }
}

async fn server() -> volt_serve::RunningServer {
    let batching = EndpointConfig {
        max_batch_size: 8,
        batch_timeout: Duration::from_millis(2),
        ..EndpointConfig::default()
    };
    Server::new(ServerConfig { port: 0, ..ServerConfig::default() })
        .openai_chat(EndpointConfig { path: "/v1/chat/completions".into(), ..batching.clone() }, Reverser)
        .and_then(|s| s.openai_embeddings(EndpointConfig { path: "/v1/embeddings".into(), ..batching }, Bag))
        .expect("endpoints")
        .bind()
        .await
        .expect("bind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_plain_streamed_and_stopped() {
    let server = server().await;
    let client = Client::new(server.url());
    let body = json!({"model": "reverser", "messages": [{"role": "user", "content": "hello"}]});
    let r = client.post("/v1/chat/completions", &body).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "olleh");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}));

    let limited = json!({"messages": [{"role": "user", "content": "abcdef"}], "max_tokens": 3});
    let v = client.post("/v1/chat/completions", &limited).await.expect("request").json();
    assert_eq!(
        (v["choices"][0]["message"]["content"].clone(), v["choices"][0]["finish_reason"].clone()),
        (json!("fed"), json!("length"))
    );

    let stopped = json!({"messages": [{"role": "user", "content": "xx-END-yy"}], "stop": ["DN"]});
    let v = client.post("/v1/chat/completions", &stopped).await.expect("request").json();
    assert_eq!(v["choices"][0]["message"]["content"], "yy-");

    let streamed = json!({"messages": [{"role": "user", "content": "abc"}], "stream": true});
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&streamed)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let events: Vec<&str> = raw.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events.iter().all(|e| e.starts_with("data: ")), "{raw}");
    assert_eq!(*events.last().expect("events"), "data: [DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e["data: ".len()..]).expect("json chunk"))
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "cba");
    assert_eq!(chunks.last().expect("chunk")["choices"][0]["finish_reason"], "stop");

    let r = client.post("/v1/chat/completions", &json!({"messages": []})).await.expect("request");
    assert_eq!(r.status, 400);
    assert!(r.text.contains("`messages`"), "{}", r.text);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_refuses_by_name_the_options_it_would_otherwise_ignore() {
    let server = server().await;
    let client = Client::new(server.url());
    let ask = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "abc"}]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    for (extra, field) in [
        (json!({"n": 2}), "n"),
        (json!({"n": 0}), "n"),
        (json!({"n": -1}), "n"),
        (json!({"n": "1"}), "n"),
        (json!({"presence_penalty": 2.5}), "presence_penalty"),
        (json!({"frequency_penalty": -2.01}), "frequency_penalty"),
        (json!({"presence_penalty": "high"}), "presence_penalty"),
        // In range, but the reverser does not implement penalties: refused, not ignored.
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": -2.0}), "frequency_penalty"),
    ] {
        let r = client.post("/v1/chat/completions", &ask(extra.clone())).await.expect("request");
        assert_eq!(r.status, 400, "{extra}: {}", r.text);
        let message = r.json()["error"]["message"].as_str().map(str::to_owned).unwrap_or_default();
        assert!(message.starts_with(&format!("`{field}`")), "{extra}: {message}");
    }
    for extra in
        [json!({"n": 1}), json!({"n": null}), json!({"presence_penalty": 0, "frequency_penalty": 0.0})]
    {
        let r = client.post("/v1/chat/completions", &ask(extra.clone())).await.expect("request");
        assert_eq!(
            (r.status, r.json()["choices"][0]["message"]["content"].clone()),
            (200, json!("cba")),
            "{extra}"
        );
    }
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_take_a_string_or_a_list_and_keep_the_order() {
    let server = server().await;
    let client = Client::new(server.url());
    let v = client
        .post("/v1/embeddings", &json!({"input": "a b", "model": "bag"}))
        .await
        .expect("request")
        .json();
    assert_eq!(v["data"][0]["embedding"], json!([3.0, 1.0, 1.0]));
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let texts: Vec<String> = (0..20).map(|i| "o".repeat(i + 1)).collect();
    let v = client.post("/v1/embeddings", &json!({"input": texts})).await.expect("request").json();
    for i in 0..20 {
        assert_eq!(v["data"][i]["index"], i);
        assert_eq!(v["data"][i]["embedding"][0], (i + 1) as f64);
    }
    let r = client.post("/v1/embeddings", &json!({"input": []})).await.expect("request");
    assert_eq!(r.status, 400);
    assert!(r.text.contains("`input`"), "{}", r.text);
    let r = client
        .post("/v1/embeddings", &json!({"input": "x", "encoding_format": "hex"}))
        .await
        .expect("request");
    assert_eq!(r.status, 400);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_of_up_to_2048_texts_is_admitted_whole_on_an_idle_server() {
    // The queue holds 1,024 items by default: one request's 1,500 texts still go in.
    let server = server().await;
    let client = Client::new(server.url());
    for n in [1500, 2048] {
        let texts: Vec<String> = (0..n).map(|i| "o".repeat(i % 50 + 1)).collect();
        let r = client.post("/v1/embeddings", &json!({"input": texts})).await.expect("request");
        assert_eq!(r.status, 200, "{n} inputs: {}", r.text);
        let data = r.json()["data"].as_array().cloned().expect("data");
        assert_eq!(data.len(), n);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(
                (d["index"].clone(), d["embedding"][0].clone()),
                (json!(i), json!((i % 50 + 1) as f64))
            );
        }
    }
    let texts = vec!["a"; 2049];
    let r = client.post("/v1/embeddings", &json!({"input": texts})).await.expect("request");
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("`input`") && r.text.contains("2048"), "{}", r.text);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dimensions_are_refused_by_name_for_a_model_not_trained_to_shorten_its_vectors() {
    let server = server().await;
    let client = Client::new(server.url());
    for d in [json!(128), json!(3), json!(1), json!(0), json!(-1), json!(2.5), json!("2")] {
        let r =
            client.post("/v1/embeddings", &json!({"input": "a b", "dimensions": d})).await.expect("request");
        assert_eq!(r.status, 400, "dimensions {d}: {}", r.text);
        assert!(
            r.json()["error"]["message"].as_str().is_some_and(|m| m.starts_with("`dimensions`: ")),
            "{}",
            r.text
        );
    }
    let r =
        client.post("/v1/embeddings", &json!({"input": "a b", "dimensions": null})).await.expect("request");
    assert_eq!((r.status, r.json()["data"][0]["embedding"].clone()), (200, json!([3.0, 1.0, 1.0])));
    server.shutdown().await.expect("shutdown");
}

/// A 4-wide "embedding" trained, as it were, to be shortened: [1, 2, 2, 4] / 5.
struct Nested;

impl EmbeddingsApi for Nested {
    type Model = ();
    fn setup(&self, _: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn embed(&self, _: &mut (), texts: Vec<String>) -> Result<Vec<Embedding>, ApiError> {
        Ok(texts.iter().map(|_| Embedding { vector: vec![0.2, 0.4, 0.4, 0.8], tokens: 1 }).collect())
    }
    fn model_name(&self) -> String {
        "volt/nested".into()
    }
    fn supported_dimensions(&self) -> Option<usize> {
        Some(4)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_can_shorten_its_vectors_returns_them_shortened_and_renormalised() {
    let server = Server::new(ServerConfig { port: 0, ..ServerConfig::default() })
        .openai_embeddings(EndpointConfig::at("/v1/embeddings"), Nested)
        .expect("endpoint")
        .bind()
        .await
        .expect("bind");
    let client = Client::new(server.url());
    let vector = |r: &volt_serve::client::Reply| -> Vec<f64> {
        serde_json::from_value(r.json()["data"][0]["embedding"].clone()).expect("a float vector")
    };
    let close = |got: Vec<f64>, want: &[f64]| {
        got.len() == want.len() && got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6)
    };
    let r = client.post("/v1/embeddings", &json!({"input": "x", "dimensions": 2})).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.text);
    let s5 = 5f64.sqrt();
    assert!(close(vector(&r), &[1.0 / s5, 2.0 / s5]), "{}", r.text);
    let r = client.post("/v1/embeddings", &json!({"input": "x", "dimensions": 1})).await.expect("request");
    assert!(close(vector(&r), &[1.0]), "{}", r.text);
    let r = client.post("/v1/embeddings", &json!({"input": "x", "dimensions": 4})).await.expect("request");
    assert!(close(vector(&r), &[0.2, 0.4, 0.4, 0.8]), "{}", r.text);
    let r = client
        .post("/v1/embeddings", &json!({"input": ["x", "y"], "dimensions": 3, "encoding_format": "base64"}))
        .await
        .expect("request");
    for d in r.json()["data"].as_array().expect("data") {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().expect("base64"))
            .expect("decode");
        let got: Vec<f64> =
            bytes.chunks(4).map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect();
        assert!(close(got, &[1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]), "{d}");
    }
    for d in [json!(0), json!(5), json!(-4), json!(1.5)] {
        let r =
            client.post("/v1/embeddings", &json!({"input": "x", "dimensions": d})).await.expect("request");
        assert_eq!(r.status, 400, "{d}: {}", r.text);
        assert!(r.text.contains("`dimensions`: ") && r.text.contains("from 1 to 4"), "{}", r.text);
    }
    server.shutdown().await.expect("shutdown");
}

/// Embeds like [`Bag`], but each batch waits until `open` is set.
#[derive(Clone, Default)]
struct GatedBag {
    open: Arc<AtomicBool>,
}

impl EmbeddingsApi for GatedBag {
    type Model = ();
    fn setup(&self, _: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn embed(&self, model: &mut (), texts: Vec<String>) -> Result<Vec<Embedding>, ApiError> {
        while !self.open.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        Bag.embed(model, texts)
    }
    fn model_name(&self) -> String {
        "gated-bag".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_embeddings_queue_refuses_new_requests_but_not_the_rest_of_an_admitted_one() {
    let api = GatedBag::default();
    let endpoint =
        EndpointConfig { max_queue: 4, max_batch_size: 64, ..EndpointConfig::at("/v1/embeddings") };
    let server = Server::new(ServerConfig { port: 0, ..ServerConfig::default() })
        .openai_embeddings(endpoint, api.clone())
        .expect("endpoint")
        .bind()
        .await
        .expect("bind");
    let client = Client::new(server.url());
    let texts: Vec<String> = (0..1000).map(|i| "a".repeat(i % 7 + 1)).collect();
    let admitted = {
        let (client, texts) = (client.clone(), texts.clone());
        tokio::spawn(async move {
            client.post("/v1/embeddings", &json!({"input": texts})).await.expect("request")
        })
    };
    // Wait until its texts are queued behind the first (held) batch.
    let depth = "volt_queue_depth{route=\"/v1/embeddings\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = common::parse_prometheus(&client.get("/metrics").await.expect("metrics").text);
        if common::sample(&s, depth) >= 4.0 {
            break;
        }
        assert!(!admitted.is_finished(), "the 1,000 texts were answered before any was embedded");
        assert!(std::time::Instant::now() < deadline, "the texts never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = client.post("/v1/embeddings", &json!({"input": "one more"})).await.expect("request");
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("1")), "{}", r.text);
    api.open.store(true, Ordering::SeqCst);
    let r = admitted.await.expect("task");
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.json()["data"].as_array().cloned().expect("data");
    assert_eq!(data.len(), 1000);
    assert!(data.iter().enumerate().all(|(i, d)| d["embedding"][0] == json!((i % 7 + 1) as f64)));
    // Room again: the refused request succeeds when retried.
    let r = client.post("/v1/embeddings", &json!({"input": "one more"})).await.expect("request");
    assert_eq!((r.status, r.json()["data"][0]["embedding"].clone()), (200, json!([8.0, 4.0, 1.0])));
    server.shutdown().await.expect("shutdown");
}

const CLIENT_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
out = {}
r = client.chat.completions.create(model="reverser", messages=[{"role": "user", "content": "volt"}])
out["plain"] = [r.choices[0].message.content, r.choices[0].finish_reason, r.usage.total_tokens]
stream = client.chat.completions.create(model="reverser", messages=[{"role": "user", "content": "serve"}],
                                        stream=True, stream_options={"include_usage": True})
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage.total_tokens
out["stream"] = [pieces, usage]
e = client.embeddings.create(model="bag", input=["hi there", "aeiou"])
out["embeddings"] = [list(d.embedding) for d in e.data]
f = client.embeddings.create(model="bag", input="abc", encoding_format="float")
out["float"] = list(f.data[0].embedding)
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_reads_both_specs() {
    // Read at run time: a test binary reused from another checkout must not point there.
    let python =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let server = server().await;
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).args(["-c", CLIENT_SCRIPT, &url]).output().expect("run python")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["plain"], json!(["tlov", "stop", 8]));
    assert_eq!(v["stream"], json!([["e", "v", "r", "e", "s"], 10]));
    assert_eq!(
        v["embeddings"],
        json!([[8.0, 3.0, 1.0], [5.0, 5.0, 0.0]]),
        "the client's default base64 decodes"
    );
    assert_eq!(v["float"], json!([3.0, 1.0, 0.0]));
    server.shutdown().await.expect("shutdown");
}

const MODELS_SCRIPT: &str = r#"
import json, sys
import openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="s3cret", max_retries=0)
out = {"list": [[m.id, m.object, m.owned_by, m.created] for m in client.models.list()]}
m = client.models.retrieve("volt/nested")
out["one"] = [m.id, m.object, m.owned_by]
try:
    client.models.retrieve("gpt-4o")
    out["unknown"] = "found"
except openai.NotFoundError as e:
    out["unknown"] = [e.status_code, str(e)]
try:
    OpenAI(base_url=sys.argv[1] + "/v1", api_key="wrong", max_retries=0).models.list()
    out["wrong_key"] = "accepted"
except openai.AuthenticationError as e:
    out["wrong_key"] = e.status_code
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_models_lists_the_models_of_the_openai_endpoints_for_the_official_client() {
    let python =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    let at = |path: &str| EndpointConfig::at(path);
    let server =
        Server::new(ServerConfig { port: 0, api_keys: vec!["s3cret".into()], ..ServerConfig::default() })
            .openai_chat(at("/v1/chat/completions"), Reverser)
            .and_then(|s| s.openai_embeddings(at("/v1/embeddings"), Nested))
            .and_then(|s| s.openai_embeddings(at("/bag/embeddings"), Bag))
            .and_then(|s| s.openai_embeddings(at("/bag2/embeddings"), Bag))
            .and_then(|s| s.endpoint(at("/predict"), common::Doubler::default()))
            .expect("endpoints")
            .bind()
            .await
            .expect("bind");
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).args(["-c", MODELS_SCRIPT, &url]).output().expect("run python")
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<&str> = v["list"].as_array().expect("list").iter().filter_map(|m| m[0].as_str()).collect();
    assert_eq!(ids, ["reverser", "volt/nested", "bag"], "one entry per model, in endpoint order");
    assert!(v["list"]
        .as_array()
        .expect("list")
        .iter()
        .all(|m| m[1] == "model" && m[2] == "volt" && m[3].as_u64() > Some(1_700_000_000)));
    assert_eq!(v["one"], json!(["volt/nested", "model", "volt"]));
    assert_eq!(v["unknown"][0], 404);
    assert!(v["unknown"][1].as_str().is_some_and(|m| m.contains("gpt-4o")), "{}", v["unknown"]);
    assert_eq!(v["wrong_key"], 401);

    // The shapes, exactly, and the refused cases.
    let client = Client::new(server.url()).with_api_key("s3cret");
    let list = client.get("/v1/models").await.expect("request").json();
    let first = list["data"][0].as_object().expect("model object");
    assert_eq!(list["object"], "list");
    assert_eq!(first.keys().collect::<Vec<_>>(), ["created", "id", "object", "owned_by"]);
    let one = client.get("/v1/models/reverser").await.expect("request").json();
    assert_eq!(one, list["data"][0]);
    let r = client.get("/v1/models/nope").await.expect("request");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(r.json()["error"]["code"], 404);
    assert_eq!(client.get("/v1/models/").await.expect("request").status, 404);
    assert_eq!(Client::new(server.url()).get("/v1/models").await.expect("request").status, 401);
    assert_eq!(Client::new(server.url()).get("/v1/models/bag").await.expect("request").status, 401);
    assert_eq!(client.post("/v1/models", &json!({})).await.expect("request").status, 405);
    server.shutdown().await.expect("shutdown");

    // A server without OpenAI endpoints lists no models.
    let server = Server::new(ServerConfig { port: 0, ..ServerConfig::default() })
        .endpoint(at("/predict"), common::Doubler::default())
        .expect("endpoint")
        .bind()
        .await
        .expect("bind");
    let r = Client::new(server.url()).get("/v1/models").await.expect("request");
    assert_eq!((r.status, r.json()), (200, json!({"object": "list", "data": []})));
    server.shutdown().await.expect("shutdown");
}
