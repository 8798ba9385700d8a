//! `volt serve --gguf PATH`: the real SmolLM2-135M-Instruct GGUF file (scripts/setup links
//! it as .smollm2) at `/v1/chat/completions`, through raw HTTP and the official `openai`
//! client: greedy answers, streams equal to whole answers, UTF-8 across tokens, 400s that
//! name the field, batch invariance, disconnects, queueing and 503s.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod support;
use support::llm::{block_on, post, Served};

const GGUF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.smollm2");
const FRANCE: &str = "What is the capital of France?";
const PARIS: &str = "The capital of France is Paris.";
const HAIKU: &str = "Write a haiku about the sea.";
/// Greedy decoding of this prompt goes on for well over 600 tokens (25 s here).
const COUNT: &str = "Write the numbers from 1 to 1000 separated by commas.";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf() -> &'static str {
    assert!(Path::new(GGUF).is_file(), "{GGUF} is missing: scripts/setup links SmolLM2's GGUF file there");
    GGUF
}

/// Starts `volt serve --gguf .smollm2 ARGS` on a free port and waits for /health.
fn serve(args: &[&str]) -> Served {
    support::llm::serve(&[&["--gguf", gguf()], args].concat())
}

/// `volt ARGS` run to its end.
fn volt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volt")).args(args).output().expect("run volt")
}

/// A chat request body: one user message, greedy.
fn ask(content: &str, max_tokens: usize) -> Value {
    json!({"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": max_tokens})
}

/// A whole answer's content, finish reason and usage.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    content: String,
    finish: String,
    usage: (u64, u64, u64),
}

fn answer(v: &Value) -> Answer {
    let u = &v["usage"];
    let n = |k: &str| u[k].as_u64().unwrap_or_else(|| panic!("usage.{k} in {v}"));
    Answer {
        content: v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("content: {v}"))
            .into(),
        finish: v["choices"][0]["finish_reason"].as_str().unwrap_or_else(|| panic!("finish: {v}")).into(),
        usage: (n("prompt_tokens"), n("completion_tokens"), n("total_tokens")),
    }
}

/// A non-streamed greedy answer; panics unless it is a 200.
async fn complete(client: &reqwest::Client, url: &str, body: &Value) -> Answer {
    let (status, v) = post(client, url, body).await;
    assert_eq!(status, 200, "{v}");
    answer(&v)
}

/// The `data:` events of an SSE stream: its status, the chunks before `[DONE]`, whether
/// `[DONE]` came.
async fn stream(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Vec<Value>, bool) {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let r = client.post(url).json(&body).send().await.expect("send");
    let status = r.status().as_u16();
    let text = r.text().await.expect("stream body");
    let (mut chunks, mut done) = (Vec::new(), false);
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        assert!(!done, "data after [DONE]: {text:.2000}");
        if data == "[DONE]" {
            done = true;
        } else {
            chunks.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}")));
        }
    }
    if status == 200 {
        assert!(!chunks.is_empty(), "an empty stream: {text:.2000}");
    } else {
        chunks.push(
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} not JSON ({e}): {text:.500}")),
        );
    }
    (status, chunks, done)
}

/// Each chunk's `delta.content` (absent ones skipped).
fn deltas(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()).map(str::to_owned))
        .collect()
}

/// The finish reason the stream's chunks carry (exactly one of them must).
fn stream_finish(chunks: &[Value]) -> String {
    let reasons: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["finish_reason"].as_str()))
        .collect();
    assert_eq!(reasons.len(), 1, "one chunk carries the finish reason: {chunks:?}");
    reasons[0].to_owned()
}

fn error_message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_else(|| panic!("no error.message in {v}"))
}

// ---------------------------------------------------------------------------------------
// 1. The command line.

#[test]
fn usage_errors_exit_2_and_name_the_flags() {
    let code_and_stderr = |o: &Output| (o.status.code(), String::from_utf8_lossy(&o.stderr).into_owned());

    let (code, err) =
        code_and_stderr(&volt(&["serve", "--model", "smollm2", "--gguf", gguf(), "--port", "0"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--model") && err.contains("--gguf"), "both sources named: {err}");

    let (code, err) = code_and_stderr(&volt(&["serve", "--port", "0"]));
    assert_eq!(code, Some(2), "no model at all: {err}");
    assert!(err.contains("--model") && err.contains("--gguf"), "says how to give one: {err}");

    let (code, err) =
        code_and_stderr(&volt(&["serve", "--gguf", gguf(), "--checkpoint", "x", "--port", "0"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--checkpoint"), "{err}");

    let (code, err) = code_and_stderr(&volt(&["serve", "--gguf", "/nonexistent.gguf", "--port", "0"]));
    assert!(code.is_some_and(|c| c != 0), "a missing file: {code:?} {err}");
    assert!(err.contains("/nonexistent.gguf"), "names the file: {err}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let text = tmp.path().join("notes.gguf");
    std::fs::write(&text, "these are notes, not a GGUF file\n".repeat(20)).expect("write");
    let text = text.to_str().expect("utf-8 path");
    let (code, err) = code_and_stderr(&volt(&["serve", "--gguf", text, "--port", "0"]));
    assert!(code.is_some_and(|c| c != 0), "a text file: {code:?} {err}");
    assert!(err.contains(text), "names the file: {err}");
}

// ---------------------------------------------------------------------------------------
// 2-4. Greedy answers, streamed and not.

#[test]
fn the_greedy_answer_is_paris_and_usage_counts_tokens() {
    let served = serve(&[]);
    block_on(async {
        let client = reqwest::Client::new();
        let (status, v) = post(&client, &served.chat_url(), &ask(FRANCE, 40)).await;
        assert_eq!(status, 200, "{v}");
        let a = answer(&v);
        assert_eq!(a.content, PARIS);
        assert_eq!(a.finish, "stop", "the model ended its answer itself");
        let (prompt, completion, total) = a.usage;
        assert_eq!((prompt, completion), (37, 7), "SmolLM2's chat prompt and answer, in tokens");
        assert_eq!(total, prompt + completion);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");

        // The model the answer names is the one /v1/models lists.
        let models: Value = client
            .get(format!("{}/v1/models", served.url))
            .send()
            .await
            .expect("models")
            .json()
            .await
            .expect("json");
        let ids: Vec<&str> =
            models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
        assert_eq!(ids.len(), 1, "{models}");
        assert!(!ids[0].is_empty());
        assert_eq!(v["model"], ids[0], "{models}");

        // Greedy is deterministic: the same request, the same answer.
        assert_eq!(complete(&client, &served.chat_url(), &ask(FRANCE, 40)).await, a);
        // Fewer tokens than the answer needs: cut, and said so.
        let cut = complete(&client, &served.chat_url(), &ask(FRANCE, 3)).await;
        assert_eq!(cut.finish, "length");
        assert_eq!(cut.usage, (37, 3, 40));
        assert!(PARIS.starts_with(&cut.content) && cut.content.len() < PARIS.len(), "{cut:?}");

        // Penalties reach the engine's sampler: a counting answer repeats its line
        // breaks, which a frequency penalty pushes out.
        let count = ask("Count from 1 to 20, separated by commas.", 60);
        let plain = complete(&client, &served.chat_url(), &count).await.content;
        let mut penalised = count.clone();
        penalised["frequency_penalty"] = json!(2.0);
        let penalised = complete(&client, &served.chat_url(), &penalised).await.content;
        let lines = |t: &str| t.matches('\n').count();
        assert!(lines(&plain) >= 10, "{plain:?}");
        assert!(lines(&penalised) < lines(&plain) / 2, "{plain:?} vs penalised {penalised:?}");
    });
}

#[test]
fn a_greedy_stream_is_the_greedy_answer_in_pieces() {
    let served = serve(&[]);
    block_on(async {
        let client = reqwest::Client::new();
        let whole = complete(&client, &served.chat_url(), &ask(HAIKU, 24)).await;
        assert_eq!(whole.finish, "length", "24 tokens are not enough for the haiku: {whole:?}");
        assert_eq!(whole.usage.1, 24);
        assert_eq!(whole.usage.2, whole.usage.0 + 24);

        let mut body = ask(HAIKU, 24);
        body["stream_options"] = json!({"include_usage": true});
        let (status, chunks, done) = stream(&client, &served.chat_url(), &body).await;
        assert_eq!(status, 200, "{chunks:?}");
        assert!(done, "ends with [DONE]");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"), "{chunks:?}");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let pieces = deltas(&chunks);
        assert!(pieces.iter().filter(|p| !p.is_empty()).count() > 5, "streamed in pieces: {pieces:?}");
        assert_eq!(pieces.concat(), whole.content);
        assert_eq!(stream_finish(&chunks), "length");
        // The last chunk carries usage and no choices; the others carry no usage.
        let last = chunks.last().expect("chunks");
        assert_eq!(last["choices"], json!([]), "{last}");
        let u = &last["usage"];
        assert_eq!(
            (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64(), u["total_tokens"].as_u64()),
            (Some(whole.usage.0), Some(24), Some(whole.usage.2)),
            "{last}"
        );
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()), "{chunks:?}");

        // Without include_usage: the same text, and no usage chunk.
        let (status, plain, done) = stream(&client, &served.chat_url(), &ask(HAIKU, 24)).await;
        assert_eq!((status, done), (200, true));
        assert_eq!(deltas(&plain).concat(), whole.content);
        assert!(plain
            .iter()
            .all(|c| c["usage"].is_null() && c["choices"].as_array().is_some_and(|a| a.len() == 1)));
    });
}

#[test]
fn emoji_spread_over_tokens_stream_as_whole_characters() {
    let served = serve(&[]);
    block_on(async {
        let client = reqwest::Client::new();
        // Greedy: eight of the same emoji, three byte-level tokens each.
        let body = ask("Give me three emoji that describe the ocean.", 24);
        let whole = complete(&client, &served.chat_url(), &body).await;
        let emoji = whole.content.chars().filter(|&c| c as u32 >= 0x1F000).count();
        assert!(emoji >= 3, "the model answered with emoji: {whole:?}");
        assert!(!whole.content.contains('\u{FFFD}'), "{whole:?}");

        let mut streamed = body.clone();
        streamed["stream_options"] = json!({"include_usage": true});
        let (status, chunks, done) = stream(&client, &served.chat_url(), &streamed).await;
        assert_eq!((status, done), (200, true), "{chunks:?}");
        let pieces = deltas(&chunks);
        for p in &pieces {
            assert!(!p.contains('\u{FFFD}'), "a chunk split a character: {pieces:?}");
        }
        assert_eq!(pieces.concat(), whole.content, "{pieces:?}");
        // An emoji is several byte-level tokens: fewer pieces of text than tokens came,
        // so some tokens were held until their character was whole.
        let completion =
            chunks.last().expect("usage chunk")["usage"]["completion_tokens"].as_u64().expect("usage");
        assert_eq!(completion, whole.usage.1);
        let texts = pieces.iter().filter(|p| !p.is_empty()).count() as u64;
        assert!(texts < completion, "{texts} pieces of text for {completion} tokens: {pieces:?}");
    });
}

#[test]
fn a_completion_cut_inside_an_emoji_ends_on_a_whole_character() {
    let served = serve(&[]);
    block_on(async {
        let client = reqwest::Client::new();
        // Greedy: `The emoji is "` and then 😍 after 😍; the 24th token is the first of
        // one more 😍's bytes.
        let prompt = "What emoji means happy? Reply with the emoji.";
        let cut = complete(&client, &served.chat_url(), &ask(prompt, 24)).await;
        let longer = complete(&client, &served.chat_url(), &ask(prompt, 30)).await;
        assert_eq!((cut.finish.as_str(), cut.usage.1), ("length", 24), "{cut:?}");
        assert!(cut.content.contains('\u{1F60D}'), "{cut:?}");
        assert!(!cut.content.contains('\u{FFFD}'), "half a character became U+FFFD: {cut:?}");
        assert!(longer.content.starts_with(&cut.content), "{cut:?} is not the start of {longer:?}");

        let (status, chunks, done) = stream(&client, &served.chat_url(), &ask(prompt, 24)).await;
        assert_eq!((status, done), (200, true), "{chunks:?}");
        let pieces = deltas(&chunks);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "half a character became U+FFFD: {pieces:?}");
        assert_eq!(pieces.concat(), cut.content);
    });
}

// ---------------------------------------------------------------------------------------
// 5. The official `openai` client.

const CLIENT_SCRIPT: &str = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
out = {}
for name, question, max_tokens in [("france", sys.argv[2], 40), ("haiku", sys.argv[3], 24)]:
    ask = dict(model="smollm2", messages=[{"role": "user", "content": question}], max_tokens=max_tokens,
               temperature=0)
    r = client.chat.completions.create(**ask)
    plain = [r.choices[0].message.content, r.choices[0].finish_reason,
             [r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens]]
    pieces, finish, usage = [], [], None
    for c in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **ask):
        if c.usage is not None:
            usage = [c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens]
        for ch in c.choices:
            if ch.delta.content:
                pieces.append(ch.delta.content)
            if ch.finish_reason:
                finish.append(ch.finish_reason)
    out[name] = {"plain": plain, "stream": ["".join(pieces), finish, usage]}
out["models"] = [m.id for m in client.models.list()]
print(json.dumps(out))
"#;

#[test]
fn the_openai_client_gets_what_raw_http_gets() {
    let served = serve(&[]);
    let (france, haiku) = block_on(async {
        let client = reqwest::Client::new();
        (
            complete(&client, &served.chat_url(), &ask(FRANCE, 40)).await,
            complete(&client, &served.chat_url(), &ask(HAIKU, 24)).await,
        )
    });
    assert_eq!(france.content, PARIS);
    let out = Command::new(repo().join(".python"))
        .args(["-c", CLIENT_SCRIPT, &served.url, FRANCE, HAIKU])
        .output()
        .expect("run python (scripts/setup installs openai)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    for (name, raw) in [("france", &france), ("haiku", &haiku)] {
        let usage = json!([raw.usage.0, raw.usage.1, raw.usage.2]);
        assert_eq!(v[name]["plain"], json!([raw.content, raw.finish, usage]), "{name}: {v}");
        assert_eq!(v[name]["stream"], json!([raw.content, [raw.finish], usage]), "{name}: {v}");
    }
    assert_eq!(haiku.finish, "length");
    assert_eq!(v["models"].as_array().map(Vec::len), Some(1), "{v}");
}

// ---------------------------------------------------------------------------------------
// 6. Bad requests.

/// About 2,000 words: far past a 256-token context.
fn long_prompt() -> String {
    (0..2000).map(|i| ["sea", "salt", "wave", "tide"][i % 4]).collect::<Vec<_>>().join(" ")
}

#[test]
fn bad_requests_get_400s_naming_the_problem_and_the_server_goes_on() {
    let served = serve(&["--max-model-len", "256"]);
    let user = |c: &str| json!([{"role": "user", "content": c}]);
    // Each refusal names its field as `field`.
    let cases: Vec<(&str, Value, &str)> = vec![
        ("prompt past the context", json!({"messages": user(&long_prompt()), "max_tokens": 8}), "`messages`"),
        ("empty messages", json!({"messages": [], "max_tokens": 8}), "`messages`"),
        ("max_tokens 0", json!({"messages": user(FRANCE), "max_tokens": 0}), "`max_tokens`"),
        ("max_tokens -1", json!({"messages": user(FRANCE), "max_tokens": -1}), "`max_tokens`"),
        (
            "max_tokens past the context",
            json!({"messages": user(FRANCE), "max_tokens": 100_000}),
            "`max_tokens`",
        ),
        // The prompt is 37 tokens: 220 more do not fit in 256, 219 do.
        (
            "max_tokens one past the context",
            json!({"messages": user(FRANCE), "max_tokens": 220}),
            "`max_tokens`",
        ),
        ("temperature \"hot\"", json!({"messages": user(FRANCE), "temperature": "hot"}), "`temperature`"),
        ("n 2", json!({"messages": user(FRANCE), "n": 2}), "`n`"),
    ];
    block_on(async {
        let client = reqwest::Client::new();
        let url = served.chat_url();
        let mut wrong = Vec::new();
        for (name, body, field) in &cases {
            for streamed in [false, true] {
                let (status, v) = if streamed {
                    let (status, chunks, _) = stream(&client, &url, body).await;
                    (status, chunks.last().cloned().unwrap_or_default())
                } else {
                    post(&client, &url, body).await
                };
                let message = v["error"]["message"].as_str().unwrap_or_default();
                if status != 400 || !message.contains(field) {
                    wrong.push(format!("{name} (stream: {streamed}): {status} {v:.300}"));
                }
            }
        }
        let fits =
            complete(&client, &url, &json!({"messages": user(FRANCE), "max_tokens": 219, "temperature": 0}))
                .await;
        assert_eq!(fits.content, PARIS, "219 tokens fit after the 37 of the prompt");
        assert!(wrong.is_empty(), "not refused by name:\n{}", wrong.join("\n"));
        // The server still answers.
        assert_eq!(complete(&client, &url, &ask(FRANCE, 40)).await.content, PARIS);
    });
}

#[test]
fn a_prompt_past_the_context_is_a_400_even_when_streamed() {
    let served = serve(&["--max-model-len", "256"]);
    block_on(async {
        let client = reqwest::Client::new();
        let body = json!({"messages": [{"role": "user", "content": long_prompt()}], "max_tokens": 8,
                          "stream_options": {"include_usage": true}});
        let (status, chunks, done) = stream(&client, &served.chat_url(), &body).await;
        assert_eq!(status, 400, "refused before the stream starts, not inside it: {chunks:?}");
        assert!(!done);
        let message = error_message(chunks.last().expect("error body"));
        assert!(message.contains("messages") && message.contains("256"), "{message}");
        assert_eq!(complete(&client, &served.chat_url(), &ask(FRANCE, 40)).await.content, PARIS);
    });
}

#[test]
fn an_unknown_role_is_a_400_naming_it() {
    let served = serve(&["--max-model-len", "256"]);
    block_on(async {
        let client = reqwest::Client::new();
        let body =
            json!({"messages": [{"role": "wizard", "content": FRANCE}], "max_tokens": 8, "temperature": 0});
        let (status, v) = post(&client, &served.chat_url(), &body).await;
        assert_eq!(status, 400, "{v}");
        let message = error_message(&v);
        assert!(message.contains("role") && message.contains("wizard"), "{message}");
        assert_eq!(complete(&client, &served.chat_url(), &ask(FRANCE, 40)).await.content, PARIS);
    });
}

// ---------------------------------------------------------------------------------------
// 7. Continuous batching does not change answers.

const PROMPTS: [&str; 16] = [
    "Hi!",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three colours.",
    "What is 2 + 2?",
    "Tell me a fun fact about octopuses.",
    "Translate 'good morning' into Spanish.",
    "Explain in one sentence why the sky is blue, as you would to a child who keeps asking why.",
    "List the days of the week.",
    "What is the opposite of hot?",
    "Give me a short tip for writing clean code, and explain briefly why it helps other readers of the code.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat in five words.",
    "What does a bee make?",
    "Suggest a name for a small red boat that sails on a quiet lake in the mountains every summer morning.",
    "How many legs does a spider have?",
];

#[test]
fn sixteen_concurrent_greedy_requests_each_get_their_answer_alone() {
    let served = serve(&[]);
    let bodies: Vec<Value> =
        PROMPTS.iter().enumerate().map(|(i, p)| ask(p, 8 + (i * 40) / (PROMPTS.len() - 1))).collect();
    block_on(async {
        let client = reqwest::Client::new();
        let url = served.chat_url();
        let mut alone = Vec::new();
        for b in &bodies {
            alone.push(complete(&client, &url, b).await);
        }
        let calls: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { complete(&client, &url, &b).await })
            })
            .collect();
        let mut differ = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            let together = call.await.expect("join");
            if together != alone[i] {
                differ.push(format!(
                    "{:?}\n  alone:    {:?}\n  together: {:?}",
                    PROMPTS[i], alone[i], together
                ));
            }
        }
        assert!(differ.is_empty(), "{} of 16 differ when batched:\n{}", differ.len(), differ.join("\n"));
    });
}

// ---------------------------------------------------------------------------------------
// 8-9. Disconnects, queueing, overload.

#[test]
fn a_client_that_disconnects_frees_its_place() {
    // No request deadline: only the disconnect can free the place.
    let served = serve(&["--max-num-seqs", "1", "--timeout-ms", "600000"]);
    block_on(async {
        let client = reqwest::Client::new();
        let url = served.chat_url();
        // A stream that would run for minutes on its only place: read a little, hang up.
        let mut body = ask(COUNT, 1500);
        body["stream"] = json!(true);
        let mut r = client.post(&url).json(&body).send().await.expect("stream");
        assert_eq!(r.status(), 200);
        let mut read = String::new();
        while read.matches("\"content\"").count() < 4 {
            let chunk = r.chunk().await.expect("chunk").expect("the stream goes on");
            read.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(read.contains("\"content\":\"1"), "it counts: {read}");
        drop(r);
        // The place is free again: a short request (under a second alone) is answered
        // at once, not after the 1,500 tokens.
        let started = Instant::now();
        let r = client.post(&url).json(&ask(FRANCE, 40)).timeout(Duration::from_secs(10)).send().await;
        let r = r.expect("answered within 10 s: the disconnected stream kept its place");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(answer(&v).content, PARIS);
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    });
}

#[test]
fn with_one_place_concurrent_requests_queue_and_each_gets_its_answer() {
    let served = serve(&["--max-num-seqs", "1"]);
    let bodies: Vec<Value> = PROMPTS[..6].iter().enumerate().map(|(i, p)| ask(p, 6 + 2 * i)).collect();
    block_on(async {
        let client = reqwest::Client::new();
        let url = served.chat_url();
        let mut alone = Vec::new();
        for b in &bodies {
            alone.push(complete(&client, &url, b).await);
        }
        let calls: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move { post(&client, &url, &b).await })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let (status, v) = call.await.expect("join");
            assert_eq!(status, 200, "queued, not refused: {v}");
            assert_eq!(answer(&v), alone[i], "{}", PROMPTS[i]);
        }
    });
}

#[test]
fn past_the_queue_requests_get_503_and_the_server_stays_healthy() {
    // One place, taken by a long stream: requests wait, at least --max-queue of them
    // (the engine's own waiting room may hold more), and past that are refused at once.
    let served = serve(&["--max-num-seqs", "1", "--max-queue", "4", "--timeout-ms", "600000"]);
    block_on(async {
        let client = reqwest::Client::new();
        let url = served.chat_url();
        let mut body = ask(COUNT, 1500);
        body["stream"] = json!(true);
        let mut long = client.post(&url).json(&body).send().await.expect("stream");
        assert_eq!(long.status(), 200);
        let mut read = String::new();
        while !read.contains("\"content\":\"1") {
            let chunk = long.chunk().await.expect("chunk").expect("the stream goes on");
            read.push_str(&String::from_utf8_lossy(&chunk));
        }
        // One at a time, so that each is taken before the next comes.
        let mut calls = Vec::new();
        for i in 0..80 {
            let (client, url) = (client.clone(), url.clone());
            let body = ask(PROMPTS[i % PROMPTS.len()], 1);
            calls.push(tokio::spawn(async move {
                let r = client.post(&url).json(&body).send().await.expect("send");
                let retry_after =
                    r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let status = r.status().as_u16();
                (status, retry_after, r.json::<Value>().await.expect("json"))
            }));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // Refusals come back at once, while the long stream still holds the place; the
        // queued wait. Once full, the queue stays full: the refused are the last ones.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let refused: Vec<usize> =
            calls.iter().enumerate().filter(|(_, c)| c.is_finished()).map(|(i, _)| i).collect();
        let first = *refused.first().expect("no request was refused with 80 waiting and --max-queue 4");
        assert!(first >= 4, "--max-queue 4 holds four: refused {refused:?}");
        assert_eq!(refused, (first..80).collect::<Vec<_>>(), "refused once full, and from then on");
        let health = client.get(format!("{}/health", served.url)).send().await.expect("health");
        assert_eq!(health.status(), 200, "healthy while full");
        drop(long);
        for (i, call) in calls.into_iter().enumerate() {
            let (status, retry_after, v) = call.await.expect("join");
            if i < first {
                assert_eq!(status, 200, "request {i} waited its turn: {v}");
                assert_eq!(answer(&v).usage.1, 1, "{v}");
            } else {
                assert_eq!(status, 503, "request {i}: {v}");
                assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok()), "503 with Retry-After: {v}");
                assert!(error_message(&v).contains("capacity"), "{v}");
            }
        }
        // Emptied: the place and the queue are free again.
        assert_eq!(complete(&client, &url, &ask(FRANCE, 40)).await.content, PARIS);
        let health = client.get(format!("{}/health", served.url)).send().await.expect("health");
        assert_eq!(health.status(), 200);
    });
}

// ---------------------------------------------------------------------------------------
// 10. /v1/completions and log-probabilities, against the model run in this process.

/// Held-out text (Dickens, public domain).
const DICKENS: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, \
it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity.";

/// The quantized model the server runs, and the file's tokenizer, in this process.
fn in_process() -> (volt_llm::QuantLlama, volt_llm::GgufTokenizer) {
    let bytes = std::fs::read(gguf()).expect("read the GGUF file");
    let g = volt_formats::gguf::Gguf::parse(&bytes).expect("gguf");
    let model = volt_llm::QuantLlama::from_gguf(&bytes, &g, 2).expect("model");
    (model, volt_llm::GgufTokenizer::from_gguf(&g).expect("tokenizer"))
}

#[test]
fn echoed_prompt_logprobs_are_the_models_own_and_greedy_completions_its_argmax() {
    use volt_llm::Model;
    let served = serve(&[]);
    let (model, tokenizer) = in_process();
    let ids = tokenizer.encode(DICKENS).expect("ids");
    let rows = model
        .step(&mut [volt_llm::Step { tokens: &ids, cache: &mut model.new_cache(), all_logits: true }])
        .expect("forward")
        .remove(0);
    let want: Vec<f64> = rows
        .iter()
        .zip(&ids[1..])
        .map(|(row, &next)| {
            let (lp, _) = volt_llm::sampling::log_probs(row, &[next], 0);
            lp[0]
        })
        .collect();
    block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/v1/completions", served.url);
        let body = json!({"prompt": DICKENS, "echo": true, "logprobs": 1, "max_tokens": 0});
        let (status, v) = post(&client, &url, &body).await;
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["text"], DICKENS);
        let got: Vec<Value> =
            choice["logprobs"]["token_logprobs"].as_array().expect("token_logprobs").clone();
        assert_eq!(got.len(), ids.len(), "one entry per prompt token");
        assert_eq!(got[0], Value::Null, "the first token has no probability");
        for (i, (g, w)) in got[1..].iter().zip(&want).enumerate() {
            let g = g.as_f64().expect("a number");
            assert!((g - w).abs() < 1e-9, "token {}: served {g}, in process {w}", i + 1);
        }
        let joined: String = choice["logprobs"]["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(joined, DICKENS, "the tokens spell the prompt");
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": ids.len(), "completion_tokens": 0, "total_tokens": ids.len()})
        );

        // Greedy: each generated token is the argmax, and its logprob is the top one.
        let body =
            json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0, "logprobs": 3});
        let (status, v) = post(&client, &url, &body).await;
        assert_eq!(status, 200, "{v}");
        let lp = &v["choices"][0]["logprobs"];
        let top = lp["top_logprobs"].as_array().expect("top");
        for (i, (token, alts)) in lp["tokens"].as_array().expect("tokens").iter().zip(top).enumerate() {
            let alts = alts.as_object().expect("alternatives");
            assert_eq!(alts.len(), 3, "position {i}: {alts:?}");
            let best = alts.iter().max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).expect("cmp"));
            assert_eq!(
                best.map(|b| b.0.as_str()),
                token.as_str(),
                "position {i}: greedy takes the most likely"
            );
        }
        assert!(v["choices"][0]["text"].as_str().is_some_and(|t| t.starts_with(" Paris")), "{v}");
        // The same prompt as a chat, with logprobs: one entry per generated token.
        let mut chat = ask(FRANCE, 40);
        chat["logprobs"] = json!(true);
        let (_, v) = post(&client, &served.chat_url(), &chat).await;
        let content = v["choices"][0]["logprobs"]["content"].as_array().expect("content").clone();
        assert_eq!(content.len() as u64, answer(&v).usage.1, "{v}");
        let text: String = content.iter().filter_map(|t| t["token"].as_str()).collect();
        assert_eq!(text, PARIS);
    });
}

#[test]
fn the_engine_reports_its_requests_tokens_and_cache_at_metrics() {
    let served = serve(&[]);
    block_on(async {
        let client = reqwest::Client::new();
        let a = complete(&client, &served.chat_url(), &ask(FRANCE, 40)).await;
        let mut haiku = ask(HAIKU, 12);
        haiku["stream_options"] = json!({"include_usage": true});
        let (_, chunks, _) = stream(&client, &served.chat_url(), &haiku).await;
        assert_eq!(stream_finish(&chunks), "length");
        let haiku_prompt = chunks.last().and_then(|c| c["usage"]["prompt_tokens"].as_u64()).expect("usage");
        let text = client
            .get(format!("{}/metrics", served.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{route=\"/v1/chat/completions\"}}")))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a number")
        };
        assert_eq!(value("volt_generation_tokens_total"), (a.usage.1 + 12) as f64);
        assert_eq!(value("volt_prompt_tokens_total"), (a.usage.0 + haiku_prompt) as f64);
        assert_eq!(value("volt_time_to_first_token_seconds_count"), 2.0);
        assert_eq!(value("volt_inter_token_latency_seconds_count"), (a.usage.1 - 1 + 11) as f64);
        // Both done: nothing runs, waits or holds the cache.
        assert_eq!(value("volt_num_requests_running"), 0.0);
        assert_eq!(value("volt_num_requests_waiting"), 0.0);
        assert_eq!(value("volt_kv_cache_usage_perc"), 0.0);
        assert_eq!(value("volt_queue_depth"), 0.0);
    });
}

#[test]
fn engine_limits_of_zero_are_usage_errors_naming_the_flag() {
    for (flag, value) in [("--max-num-seqs", "0"), ("--max-model-len", "1"), ("--prefill-chunk", "0")] {
        let out = volt(&["serve", "--gguf", gguf(), "--port", "0", flag, value]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
