//! `/v1/completions` and `logprobs` in OpenAI's formats, over a model of known output:
//! it answers a raw prompt with its characters reversed, one token each, and gives the
//! k-th generated token log-probability -k (its alternatives' -k-1, -k-2, ...) and the
//! k-th prompt token -k/10 (the first none).
use serde_json::{json, Value};
use std::time::Duration;
use volt_serve::client::Client;
use volt_serve::openai::{ChatApi, ChatDelta, ChatRequest, TokenLogprob};
use volt_serve::{ApiError, Device, EndpointConfig, Server, ServerConfig, StreamOutput};

struct Reverse {
    completions: bool,
}

fn lp(bytes: &[u8], logprob: f64, top: usize) -> TokenLogprob {
    TokenLogprob {
        bytes: bytes.to_vec(),
        logprob,
        top: (0..top).map(|j| (format!("alt{j}").into_bytes(), logprob - 1.0 - j as f64)).collect(),
    }
}

impl ChatApi for Reverse {
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
            let prompt: String = match &r.prompt {
                Some(p) => p.clone(),
                None => r.messages.last().map(|m| m.content.clone()).unwrap_or_default(),
            };
            let prompt_tokens = prompt.chars().count();
            if r.echo && r.logprobs.is_some() {
                let scores = prompt
                    .chars()
                    .enumerate()
                    .map(|(k, c)| {
                        let b = c.to_string().into_bytes();
                        let score = (k > 0).then(|| lp(&b, -(k as f64) / 10.0, r.logprobs.unwrap_or(0)));
                        (b, score)
                    })
                    .collect();
                out.send(i, ChatDelta { prompt_tokens, prompt_logprobs: scores, ..ChatDelta::default() });
            }
            let answer: Vec<char> = prompt.chars().rev().collect();
            let limit = r.max_tokens.unwrap_or(usize::MAX).min(answer.len());
            for (k, c) in answer.iter().take(limit).enumerate() {
                let b = c.to_string().into_bytes();
                let delta = ChatDelta {
                    text: c.to_string(),
                    prompt_tokens,
                    tokens: 1,
                    logprobs: r.logprobs.map(|top| lp(&b, -(k as f64) - 1.0, top)).into_iter().collect(),
                    ..ChatDelta::default()
                };
                if !out.send(i, delta) {
                    break;
                }
            }
            let finish = if limit < answer.len() { "length" } else { "stop" };
            out.send(
                i,
                ChatDelta { prompt_tokens, finish_reason: Some(finish.into()), ..ChatDelta::default() },
            );
        }
        Ok(())
    }
    fn model_name(&self) -> String {
        "reverse".into()
    }
    fn supports_completions(&self) -> bool {
        self.completions
    }
}

async fn server() -> volt_serve::RunningServer {
    let endpoint = |path: &str| EndpointConfig {
        path: path.into(),
        max_batch_size: 4,
        batch_timeout: Duration::from_millis(1),
        ..EndpointConfig::default()
    };
    Server::new(ServerConfig { port: 0, ..ServerConfig::default() })
        .openai_chat(endpoint("/v1/chat/completions"), Reverse { completions: true })
        .and_then(|s| s.openai_completions(endpoint("/v1/completions"), Reverse { completions: true }))
        .expect("endpoints")
        .bind()
        .await
        .expect("bind")
}

/// The JSON chunks of an SSE body, `[DONE]` checked and left out.
fn sse_chunks(raw: &str) -> Vec<Value> {
    let events: Vec<&str> = raw.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last().copied(), Some("data: [DONE]"), "{raw}");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").expect("data line")).expect("json"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_answer_a_raw_prompt_with_openai_defaults_and_usage() {
    let s = server().await;
    let c = Client::new(s.url());
    let r =
        c.post("/v1/completions", &json!({"prompt": "abcdefghijklmnopqrstuvwxyz"})).await.expect("request");
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")));
    // max_tokens defaults to 16, as OpenAI's.
    assert_eq!(v["choices"][0]["text"], "zyxwvutsrqponmlk");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["usage"], json!({"prompt_tokens": 26, "completion_tokens": 16, "total_tokens": 42}));
    let v = c.post("/v1/completions", &json!({"prompt": ["xy-END-z"], "stop": "D"})).await.expect("r").json();
    assert_eq!(
        (v["choices"][0]["text"].clone(), v["choices"][0]["finish_reason"].clone()),
        (json!("z-"), json!("stop"))
    );
    // Both endpoints are listed and answer.
    let models = c.get("/v1/models").await.expect("models").json();
    assert_eq!(models["data"][0]["id"], "reverse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_with_logprobs_scores_the_prompt_as_evaluation_harnesses_ask() {
    let s = server().await;
    let c = Client::new(s.url());
    let body = json!({"prompt": "abc", "echo": true, "logprobs": 1, "max_tokens": 0});
    let v = c.post("/v1/completions", &body).await.expect("request").json();
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], "abc", "echo returns the prompt, and max_tokens 0 nothing more");
    assert_eq!(choice["logprobs"]["tokens"], json!(["a", "b", "c"]));
    assert_eq!(choice["logprobs"]["token_logprobs"], json!([null, -0.1, -0.2]));
    assert_eq!(choice["logprobs"]["top_logprobs"], json!([null, {"alt0": -1.1}, {"alt0": -1.2}]));
    assert_eq!(choice["logprobs"]["text_offset"], json!([0, 1, 2]));
    assert_eq!(v["usage"]["completion_tokens"], 0);
    // Echo and generated tokens together, offsets running on through the answer.
    let body = json!({"prompt": "ab", "echo": true, "logprobs": 0, "max_tokens": 2});
    let v = c.post("/v1/completions", &body).await.expect("request").json();
    let choice = &v["choices"][0];
    assert_eq!(choice["text"], "abba");
    assert_eq!(choice["logprobs"]["tokens"], json!(["a", "b", "b", "a"]));
    assert_eq!(choice["logprobs"]["token_logprobs"], json!([null, -0.1, -1.0, -2.0]));
    assert_eq!(choice["logprobs"]["text_offset"], json!([0, 1, 2, 3]));
    // Without echo, only the generated tokens.
    let body = json!({"prompt": "ab", "logprobs": 2, "max_tokens": 2});
    let v = c.post("/v1/completions", &body).await.expect("request").json();
    assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(["b", "a"]));
    assert_eq!(v["choices"][0]["logprobs"]["top_logprobs"][1], json!({"alt0": -3.0, "alt1": -4.0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_stream_echo_first_then_tokens_then_usage() {
    let s = server().await;
    let body = json!({"prompt": "abc", "echo": true, "max_tokens": 2, "stream": true, "logprobs": 0,
                      "stream_options": {"include_usage": true}});
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/completions", s.url()))
        .json(&body)
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let chunks = sse_chunks(&raw);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"), "{raw}");
    let texts: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(texts.concat(), "abccb", "{raw}");
    assert_eq!(texts[0], "abc", "the echoed prompt comes first");
    let finish: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).collect();
    assert_eq!(finish.iter().filter(|f| !f.is_null()).count(), 1);
    let usage = chunks.last().expect("chunks");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}));
    // The streamed tokens' log-probabilities, in order, with their offsets in the text.
    let tokens: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["tokens"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(tokens, vec![json!("a"), json!("b"), json!("c"), json!("c"), json!("b")], "{raw}");
    let offsets: Vec<Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["text_offset"].as_array())
        .flatten()
        .cloned()
        .collect();
    assert_eq!(offsets, (0..5).map(|i| json!(i)).collect::<Vec<_>>(), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_logprobs_come_as_openai_content_lists_streamed_and_not() {
    let s = server().await;
    let c = Client::new(s.url());
    let ask = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "ab"}]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        body
    };
    let v = c
        .post("/v1/chat/completions", &ask(json!({"logprobs": true, "top_logprobs": 1})))
        .await
        .expect("r")
        .json();
    let content = &v["choices"][0]["logprobs"]["content"];
    assert_eq!(
        content[0],
        json!({"token": "b", "logprob": -1.0, "bytes": [98],
                                  "top_logprobs": [{"token": "alt0", "logprob": -2.0, "bytes": [97, 108, 116, 48]}]})
    );
    assert_eq!(content[1]["logprob"], -2.0);
    let v = c.post("/v1/chat/completions", &ask(json!({}))).await.expect("r").json();
    assert_eq!(v["choices"][0]["logprobs"], Value::Null, "not asked for, none given");
    for (extra, field) in [
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
        (json!({"logprobs": "yes"}), "logprobs"),
    ] {
        let r = c.post("/v1/chat/completions", &ask(extra.clone())).await.expect("r");
        assert_eq!(r.status, 400, "{extra}");
        assert!(r.text.contains(field), "{extra}: {}", r.text);
    }
    let raw = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url()))
        .json(&ask(json!({"logprobs": true, "stream": true})))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    let lps: Vec<f64> = sse_chunks(&raw)
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array())
        .flatten()
        .filter_map(|t| t["logprob"].as_f64())
        .collect();
    assert_eq!(lps, vec![-1.0, -2.0], "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_completion_requests_get_400s_naming_the_field_and_chat_only_models_no_endpoint() {
    let s = server().await;
    let c = Client::new(s.url());
    for (body, field) in [
        (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": "a", "logprobs": 9}), "logprobs"),
        (json!({"prompt": "a", "n": 3}), "n"),
        (json!({"prompt": "a", "suffix": "z"}), "suffix"),
        (json!({"messages": [{"role": "user", "content": "a"}]}), "messages"),
        (json!({"prompt": "a", "temperature": "hot"}), "temperature"),
    ] {
        let r = c.post("/v1/completions", &body).await.expect("request");
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(field), "{body}: {}", r.text);
    }
    let ok = c.post("/v1/completions", &json!({"prompt": "ok"})).await.expect("request");
    assert_eq!(ok.json()["choices"][0]["text"], "ko", "the endpoint still serves");
    let e = Server::new(ServerConfig::default())
        .openai_completions(EndpointConfig::at("/v1/completions"), Reverse { completions: false })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("does not read the raw prompts"), "{e}");
}
