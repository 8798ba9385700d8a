//! char-gpt end to end through the `volt` binary: a few training steps, then
//! `/v1/chat/completions` streamed and not and `/v1/completions`, checked with the official `openai` client.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod support;
use support::llm::Served;

fn repo() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../..")
}

/// Trains char-gpt for a few steps into `root`; returns its last checkpoint.
fn tiny_checkpoint(root: &Path) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(["fit", "--model", "char-gpt", "--seed", "0", "--trainer.max_steps", "6"])
        .args(["--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "2"])
        .args(["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])
        .arg("--trainer.default_root_dir")
        .arg(root)
        .output()
        .expect("run volt fit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("fit finished: max_steps=6 reached"), "{stdout}");
    root.join("char-gpt/version_0/checkpoints/last.safetensors")
}

fn serve(checkpoint: &Path) -> (Served, String) {
    let served = support::llm::spawn(
        Command::new(env!("CARGO_BIN_EXE_volt"))
            .args(["serve", "--model", "char-gpt", "--port", "0", "--checkpoint"])
            .arg(checkpoint),
    );
    let url = served.url.clone();
    (served, url)
}

const CLIENT_SCRIPT: &str = r#"
import json, sys
import openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
ask = dict(model="char-gpt", messages=[{"role": "user", "content": "ROMEO:\n"}], max_tokens=40, seed=5,
           temperature=0.9, extra_body={"top_k": 20})
out = {}
r = client.chat.completions.create(**ask)
out["plain"] = [r.choices[0].message.content, r.choices[0].finish_reason, r.usage.prompt_tokens,
                r.usage.completion_tokens]
chunks = [c.choices[0].delta.content for c in client.chat.completions.create(stream=True, **ask)
          if c.choices and c.choices[0].delta.content]
out["stream"] = chunks
s = client.chat.completions.create(**dict(ask, max_tokens=200, stop=["e", "E"]))
out["stop"] = [s.choices[0].message.content, s.choices[0].finish_reason]
greedy = dict(model="char-gpt", messages=[{"role": "user", "content": "ROMEO:\n"}], max_tokens=60, temperature=0)
out["greedy"] = client.chat.completions.create(**greedy).choices[0].message.content
out["penalised"] = client.chat.completions.create(
    **greedy, presence_penalty=2.0, frequency_penalty=2.0).choices[0].message.content
refused = {}
for name, extra in [("presence", dict(presence_penalty=2.5)), ("n", dict(n=2))]:
    try:
        client.chat.completions.create(**greedy, **extra)
        refused[name] = "accepted"
    except openai.BadRequestError as e:
        refused[name] = [e.status_code, str(e)]
out["refused"] = refused
out["models"] = [m.id for m in client.models.list()]
# A prompt longer than the 64-character block is cropped to it; the text slides past it.
c = client.completions.create(model="char-gpt", prompt="KING:\n" * 20, max_tokens=100, temperature=0)
out["completion"] = [c.choices[0].text, c.usage.prompt_tokens, c.usage.completion_tokens]
d = client.chat.completions.create(model="char-gpt", messages=[{"role": "user", "content": "KING:"}])
out["default"] = d.usage.completion_tokens
print(json.dumps(out))
"#;

#[test]
fn the_openai_client_streams_and_completes_char_gpt_text() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, url) = serve(&tiny_checkpoint(tmp.path()));
    let health = format!("{url}/health");
    for _ in 0..400 {
        if Command::new("curl").args(["-sf", &health]).output().is_ok_and(|o| o.status.success()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let out = Command::new(repo().join(".python"))
        .args(["-c", CLIENT_SCRIPT, &url])
        .output()
        .expect("run python (scripts/setup installs openai)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    let text = v["plain"][0].as_str().expect("content");
    assert_eq!(text.chars().count(), 40, "{text:?}");
    assert_eq!(v["plain"][1], "length");
    assert_eq!(v["plain"][2], 7, "prompt tokens are the prompt's characters");
    assert_eq!(v["plain"][3], 40);
    // Streamed: one chunk per character, and the same seed gives the same text.
    let chunks: Vec<String> = serde_json::from_value(v["stream"].clone()).expect("chunks");
    assert_eq!(chunks.len(), 40);
    assert!(chunks.iter().all(|c| c.chars().count() == 1), "{chunks:?}");
    assert_eq!(chunks.concat(), text);
    // Stop sequences cut the text before them.
    let stopped = v["stop"][0].as_str().expect("content");
    assert!(!stopped.contains(['e', 'E']), "{stopped:?}");
    assert!(stopped.chars().count() < 200);
    assert_eq!(v["stop"][1], "stop");
    // Greedy decoding with presence and frequency penalties: characters already used
    // lose 2 + 2 per use, so the text differs and spreads over more characters.
    let (greedy, penalised) =
        (v["greedy"].as_str().expect("greedy"), v["penalised"].as_str().expect("penalised"));
    assert_eq!((greedy.chars().count(), penalised.chars().count()), (60, 60));
    let distinct = |t: &str| t.chars().collect::<std::collections::HashSet<_>>().len();
    assert!(distinct(penalised) > distinct(greedy), "{greedy:?} vs penalised {penalised:?}");
    for (name, field) in [("presence", "presence_penalty"), ("n", "`n`")] {
        let r = &v["refused"][name];
        assert_eq!(r[0], 400, "{name}: {r}");
        assert!(r[1].as_str().is_some_and(|m| m.contains(field)), "{name}: {r}");
    }
    assert_eq!(v["models"], serde_json::json!(["char-gpt"]));
    assert_eq!(v["completion"][0].as_str().map(|t| t.chars().count()), Some(100), "{}", v["completion"]);
    assert_eq!((&v["completion"][1], &v["completion"][2]), (&json!(120), &json!(100)));
    assert_eq!(v["default"], 64, "without max_tokens, a block's worth of characters");
}

#[test]
fn a_client_that_disconnects_stops_its_generation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_server, url) = serve(&tiny_checkpoint(tmp.path()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let chat = format!("{url}/v1/chat/completions");
        for _ in 0..400 {
            if client.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // A stream that would take many minutes: read its first chunk, then hang up.
        let body = serde_json::json!({"messages": [{"role": "user", "content": "KING:"}],
                                      "max_tokens": 1_000_000, "stream": true});
        let mut r = client.post(&chat).json(&body).send().await.expect("stream");
        assert_eq!(r.status(), 200);
        assert!(r.chunk().await.expect("chunk").is_some());
        drop(r);
        // The only worker is free again at once: a short request is answered promptly.
        let short = serde_json::json!({"messages": [{"role": "user", "content": "KING:"}], "max_tokens": 5});
        let started = std::time::Instant::now();
        let r = client.post(&chat).json(&short).timeout(Duration::from_secs(20)).send().await.expect("short");
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["choices"][0]["message"]["content"].as_str().map(|s| s.chars().count()), Some(5));
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    });
}
