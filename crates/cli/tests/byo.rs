//! `volt serve --aoti | --torchscript`: users' own PyTorch models, exported by volt_export
//! (python/volt_export) from the examples in examples/byo, served by a real `volt serve`
//! and checked against eager PyTorch's answers. The files are built on this machine by
//! scripts/byo-models (AOTInductor compiles for the CPU it runs on), once per CPU and
//! torch version, into a cache outside the clone.
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod support;
use support::llm::{block_on, post, serve, Served};

/// Eager PyTorch and volt must agree to this (absolute) difference.
const TOLERANCE: f64 = 1e-5;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture's folder (built on first use).
fn files() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo().join(".python"))
            .arg(repo().join("scripts/byo-models"))
            .args(["--max-batch", "16"])
            .output()
            .expect("run python (scripts/setup makes .python)");
        assert!(out.status.success(), "scripts/byo-models failed: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })
}

fn refs() -> &'static Value {
    static REFS: OnceLock<Value> = OnceLock::new();
    REFS.get_or_init(|| {
        let text = std::fs::read_to_string(files().join("refs.json")).expect("refs.json");
        serde_json::from_str(&text).expect("refs JSON")
    })
}

fn file(name: &str) -> String {
    files().join(name).display().to_string()
}

/// `volt serve FLAG FILE ARGS` on a free port, healthy.
fn serve_file(flag: &str, name: &str, args: &[&str]) -> Served {
    let path = file(name);
    let mut all = vec![flag, path.as_str()];
    all.extend_from_slice(args);
    serve(&all)
}

/// GETs `url`'s JSON.
async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.expect("send").json().await.expect("json")
}

/// Every number of a nested JSON list, flattened.
fn numbers(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items.iter().flat_map(numbers).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number")],
        other => panic!("not a number: {other}"),
    }
}

/// Every leaf of a nested JSON list, flattened as it is.
fn leaves(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(leaves).collect(),
        leaf => vec![leaf.clone()],
    }
}

/// The largest difference between two nested lists of the same shape.
fn max_diff(got: &Value, want: &Value, what: &str) -> f64 {
    assert_eq!(shape(got), shape(want), "{what}: shape");
    largest_gap(&numbers(got), &numbers(want))
}

/// The largest difference between two lists of numbers of one length.
fn largest_gap(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{} numbers, want {}", got.len(), want.len());
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

fn shape(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(items) => {
            let mut s = vec![items.len()];
            s.extend(items.first().map(shape).unwrap_or_default());
            s
        }
        _ => Vec::new(),
    }
}

/// Posts each of `model`'s reference requests (1, 3, 8 and more rows than the package
/// takes) to `/predict` and compares with eager PyTorch; a sole input is sent by name
/// unless `bare`.
fn check_cases(served: &Served, model: &str, output: &str) {
    check_cases_as(served, model, output, false)
}

fn check_cases_as(served: &Served, model: &str, output: &str, bare: bool) {
    let url = format!("{}/predict", served.url);
    block_on(async {
        let client = reqwest::Client::new();
        for case in refs()[model]["cases"].as_array().expect("cases") {
            let inputs = &case["inputs"];
            let rows = inputs.as_object().and_then(|m| m.values().next()).map(shape).expect("rows")[0];
            let sent = if bare {
                inputs.as_object().and_then(|m| m.values().next()).expect("one input")
            } else {
                inputs
            };
            let (status, body) = post(&client, &url, &json!({"inputs": sent})).await;
            assert_eq!(status, 200, "{model}, {rows} rows: {body}");
            let diff = max_diff(&body["outputs"], &case["outputs"][output], &format!("{model}, {rows} rows"));
            assert!(diff <= TOLERANCE, "{model}, {rows} rows: differs from eager PyTorch by {diff}");
        }
    });
}

#[test]
fn aoti_packages_answer_as_eager_pytorch_for_1_3_8_and_more_rows_than_they_take() {
    let max = refs()["max_batch"].as_u64().expect("max batch");
    assert!(refs()["cnn"]["cases"][3]["outputs"]["logits"].as_array().expect("rows").len() as u64 > max);
    let cnn = serve_file("--aoti", "cnn.pt2", &["--max-batch-size", "32"]);
    check_cases(&cnn, "cnn", "logits");
    let minilm = serve_file("--aoti", "minilm.pt2", &[]);
    check_cases(&minilm, "minilm", "embedding");
}

#[test]
fn a_package_made_without_volt_export_is_served_from_what_aotinductor_records() {
    let served = serve_file("--aoti", "plain.pt2", &[]);
    check_cases_as(&served, "cnn", "logits", true);
    let info = block_on(get_json(&format!("{}/v2/models/plain", served.url)));
    assert_eq!(
        info["inputs"],
        json!([{"name": "input0", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]),
        "{info}"
    );
    assert_eq!(
        info["outputs"],
        json!([{"name": "output0", "datatype": "FP32", "shape": [-1, 10]}]),
        "{info}"
    );
    // AOTInductor's own checks, read from the package, refuse a wrong image size by name.
    let (status, message) = refused(&served, "/predict", json!({"inputs": image(27)}));
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("input0") && message.contains("[1, 28, 28]"), "{message}");
}

#[test]
fn torchscript_modules_answer_as_eager_pytorch_for_1_3_8_and_more_rows_than_they_take() {
    let cnn = serve_file("--torchscript", "cnn.pt", &[]);
    check_cases(&cnn, "cnn", "logits");
    let minilm = serve_file("--torchscript", "minilm.pt", &[]);
    check_cases(&minilm, "minilm", "embedding");
    let bad = json!({"inputs": {"input_ids": [[101, 99999, 102]], "attention_mask": [[1, 1, 1]]}});
    let (status, message) = refused(&minilm, "/predict", bad);
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("input_ids") && message.contains("outside 0..30522"), "{message}");
}

#[test]
fn the_open_inference_protocol_reads_the_packages_signature_and_infers() {
    let served = serve_file("--aoti", "minilm.pt2", &[]);
    let case = &refs()["minilm"]["cases"][2];
    block_on(async {
        let client = reqwest::Client::new();
        let meta = get_json(&format!("{}/v2/models/minilm", served.url)).await;
        assert_eq!(meta["platform"], "pytorch_aoti");
        assert_eq!(
            meta["inputs"],
            json!([
                {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
                {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]}
            ]),
            "{meta}"
        );
        assert_eq!(meta["outputs"], json!([{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]));
        let inputs: Vec<Value> = ["input_ids", "attention_mask"]
            .iter()
            .map(|name| {
                let t = &case["inputs"][name];
                json!({"name": name, "datatype": "INT64", "shape": shape(t), "data": leaves(t)})
            })
            .collect();
        let url = format!("{}/v2/models/minilm/infer", served.url);
        let (status, body) = post(&client, &url, &json!({"id": "q1", "inputs": inputs})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], "q1");
        let out = &body["outputs"][0];
        assert_eq!(out["name"], "embedding");
        assert_eq!(out["shape"], json!([8, 384]));
        let diff = largest_gap(&numbers(&out["data"]), &numbers(&case["outputs"]["embedding"]));
        assert!(diff <= TOLERANCE, "differs from eager PyTorch by {diff}");
    });
}

/// A Prometheus sample's value from a /metrics text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {name} in {metrics}"))
}

#[test]
fn five_hundred_concurrent_requests_are_batched_and_each_gets_its_own_answer() {
    let served = serve_file("--aoti", "cnn.pt2", &["--batch-timeout-ms", "20"]);
    let many = &refs()["cnn"]["many"];
    let images = many["image"].as_array().expect("images");
    let want = many["logits"].as_array().expect("logits");
    let labels: Vec<u64> =
        many["labels"].as_array().expect("labels").iter().filter_map(Value::as_u64).collect();
    assert_eq!(images.len(), 500);
    let url = format!("{}/predict", served.url);
    let answers: Vec<(u16, Value)> = block_on(async {
        let client = reqwest::Client::new();
        let calls: Vec<_> = images
            .iter()
            .map(|image| {
                let (client, url, body) = (client.clone(), url.clone(), json!({"inputs": [image]}));
                tokio::spawn(async move { post(&client, &url, &body).await })
            })
            .collect();
        let mut out = Vec::new();
        for call in calls {
            out.push(call.await.expect("join"));
        }
        out
    });
    let mut correct = 0;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {body}");
        let got = &body["outputs"][0];
        let diff = max_diff(got, &want[i], &format!("request {i}"));
        assert!(diff <= TOLERANCE, "request {i}: differs from eager PyTorch by {diff}");
        let scores = numbers(got);
        let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).expect("10 scores");
        correct += usize::from(best as u64 == labels[i]);
    }
    // The briefly trained CNN (600 steps) does classify: well above chance's 10%.
    let accuracy = correct as f64 / 500.0;
    assert!(accuracy > 0.7, "accuracy {accuracy}");
    let metrics = block_on(async {
        reqwest::get(format!("{}/metrics", served.url)).await.expect("metrics").text().await.expect("text")
    });
    let calls = sample(&metrics, "volt_batch_size_count{route=\"/predict\"}");
    let rows = sample(&metrics, "volt_batch_size_sum{route=\"/predict\"}");
    let singles = sample(&metrics, "volt_batch_size_bucket{le=\"1.0\",route=\"/predict\"}");
    assert_eq!(rows, 500.0, "{metrics}");
    assert!(calls < 500.0 && singles < calls, "rows were batched: {calls} calls, {singles} of one row");
    assert!(rows / calls > 2.0, "mean batch {}", rows / calls);
}

/// One grey image of 28 rows of `width` pixels, as a batch of one ([1, 1, 28, width]).
fn image(width: usize) -> Value {
    json!([[vec![vec![0.5; width]; 28]]])
}

/// A request's status and its error message.
fn refused(served: &Served, route: &str, body: Value) -> (u16, String) {
    block_on(async {
        let (status, v) = post(&reqwest::Client::new(), &format!("{}{route}", served.url), &body).await;
        let message = v["error"]["message"].as_str().or(v["error"].as_str()).unwrap_or_default().to_owned();
        (status, message)
    })
}

#[test]
fn bad_requests_get_400_naming_the_input_and_the_server_keeps_serving() {
    let served = serve_file("--aoti", "minilm.pt2", &[]);
    let ids = json!([[101, 2023, 102]]);
    let mask = json!([[1, 1, 1]]);
    let cases = [
        // Missing input.
        (json!({"inputs": {"input_ids": ids}}), "attention_mask", "is missing"),
        // An input the model lacks.
        (
            json!({"inputs": {"input_ids": ids, "attention_mask": mask, "token_type_ids": mask}}),
            "token_type_ids",
            "no such input",
        ),
        // Wrong dtype: floats where the model takes int64.
        (
            json!({"inputs": {"input_ids": [[101.5, 2023.0, 102.0]], "attention_mask": mask}}),
            "input_ids",
            "int64",
        ),
        // Wrong rank.
        (
            json!({"inputs": {"input_ids": [[[101, 2023, 102]]], "attention_mask": mask}}),
            "input_ids",
            "shape",
        ),
        // Rows that disagree.
        (
            json!({"inputs": {"input_ids": [[101, 102], [101, 102]], "attention_mask": [[1, 1]]}}),
            "attention_mask",
            "rows",
        ),
        // Longer than the package's dynamic dimension allows (256).
        (
            json!({"inputs": {"input_ids": [vec![7; 300]], "attention_mask": [vec![1; 300]]}}),
            "input_ids",
            "256",
        ),
        // A base64 buffer of another dtype.
        (
            json!({"inputs": {"input_ids": {"b64": "AAAAAA==", "dtype": "int32", "shape": [1, 1]}, "attention_mask": [[1]]}}),
            "input_ids",
            "int64",
        ),
        // Token ids past the vocabulary (volt_export recorded its 30522 rows): a compiled
        // lookup would fail inside an OpenMP region and take the process down.
        (
            json!({"inputs": {"input_ids": [[101, 2023, 102], [101, 99999, 102]], "attention_mask": [[1, 1, 1], [1, 1, 1]]}}),
            "input_ids",
            "value 99999 in row 1 is outside 0..30522",
        ),
        (
            json!({"inputs": {"input_ids": [[101, -5, 102]], "attention_mask": mask}}),
            "input_ids",
            "value -5 in row 0",
        ),
        // No rows.
        (json!({"inputs": {"input_ids": [], "attention_mask": []}}), "input_ids", "has no rows"),
    ];
    for (body, field, says) in cases {
        let (status, message) = refused(&served, "/predict", body.clone());
        assert_eq!(status, 400, "{body}: {message}");
        assert!(
            message.contains(field) && message.contains(says),
            "{body}: {message:?} should name {field} ({says})"
        );
    }
    let cnn = serve_file("--aoti", "cnn.pt2", &[]);
    let (status, message) = refused(&cnn, "/predict", json!({"inputs": image(27)}));
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("[1, 28, 28]") && message.contains("[1, 28, 27]"), "{message}");
    let (status, message) = refused(
        &cnn,
        "/v2/models/fashion_cnn/infer",
        json!({"inputs": [{"name": "image", "datatype": "FP64", "shape": [1, 1, 28, 28], "data": vec![0.0; 784]}]}),
    );
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("image") && message.contains("FP32"), "{message}");
    // Both still answer.
    check_cases(&served, "minilm", "embedding");
    let (status, _) = refused(&cnn, "/predict", json!({"inputs": image(28)}));
    assert_eq!(status, 200);
}

/// `volt serve ARGS` that must refuse to start: its exit code and stderr.
fn refused_at_start(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_volt"))
        .args(["serve", "--port", "0"])
        .args(args)
        .output()
        .expect("run volt serve");
    assert!(out.stdout.is_empty(), "it listened: {}", String::from_utf8_lossy(&out.stdout));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn broken_or_foreign_files_are_refused_at_start_with_what_is_wrong() {
    let torch = refs()["torch_version"].as_str().expect("torch version");
    let release = torch.split('+').next().expect("release");
    let cases = [
        ("--aoti", "not_a_package.pt2", vec!["not_a_package.pt2", "not a zip archive"]),
        ("--aoti", "truncated.pt2", vec!["truncated.pt2", "not a zip archive"]),
        ("--aoti", "damaged.pt2", vec!["damaged.pt2", "corrupt"]),
        ("--aoti", "other_torch.pt2", vec!["torch 2.10.0+cu128", release, "export it again"]),
        ("--aoti", "cnn.pt", vec!["cnn.pt", "no data/aotinductor/"]),
        ("--torchscript", "cnn.pt2", vec!["cnn.pt2", "not a TorchScript module", "--aoti"]),
        ("--aoti", "no_such_file.pt2", vec!["no_such_file.pt2", "cannot open"]),
    ];
    for (flag, name, says) in cases {
        let path = file(name);
        let (code, stderr) = refused_at_start(&[flag, &path]);
        assert_eq!(code, Some(2), "{flag} {name}: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{flag} {name}: {stderr:?} should say {s:?}");
        }
    }
    let cnn = file("cnn.pt2");
    let (code, stderr) = refused_at_start(&["--aoti", &cnn, "--checkpoint", "x.safetensors"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--checkpoint") && stderr.contains("--aoti"), "{stderr}");
}

const BAD_MODELS: &str = r#"
import torch
from volt_export import Input

class Baked(torch.nn.Module):
    # int() makes the traced batch a constant: the module then takes only batches of 8.
    def forward(self, x):
        return x + torch.arange(int(x.shape[0])).unsqueeze(1)

class Total(torch.nn.Module):
    def forward(self, x):
        return x.sum()

def baked():
    return Baked(), [Input("x", "float32", (4,))]

def total():
    return Total(), [Input("x", "float32", (4,))]

def fine():
    return torch.nn.Linear(4, 2), [Input("x", "float32", (4,))]
"#;

#[test]
fn volt_export_refuses_what_volt_could_not_serve_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad_models.py"), BAD_MODELS).expect("write module");
    let export = |args: &[&str]| {
        let out = Command::new(repo().join(".python"))
            .current_dir(dir.path())
            .args(["-m", "volt_export"])
            .args(args)
            .output()
            .expect("run python -m volt_export (scripts/setup installs it)");
        // Progress goes to stdout, errors to stderr.
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let cases: [(&[&str], &[&str]); 6] = [
        // The parity check runs the file at other batch sizes than the traced one.
        (
            &["bad_models:baked", "--out", "m.pt"],
            &["batch 2", "fails where eager PyTorch runs", "(2)", "(8)"],
        ),
        (&["bad_models:total", "--out", "m.pt"], &["output 'output0'", "shape ()", "first dimension"]),
        (
            &["bad_models:baked", "--out", "m.pt", "--example-batch", "1"],
            &["example batch 1", "at least 2", "specialises"],
        ),
        (&["bad_models:baked", "--out", "m.pt", "--input", "x:complex64:4"], &["input 'x'", "complex64"]),
        (&["bad_models:baked", "--out", "m.pt", "--input", "x:float32:seq"], &["'seq'", "--dim seq=MIN:MAX"]),
        (&["bad_models:baked", "--out", "m.onnx"], &["m.onnx", ".pt2", ".pt"]),
    ];
    for (args, says) in cases {
        let (code, stderr) = export(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        for s in says {
            assert!(stderr.contains(s), "{args:?}: {stderr:?} should say {s:?}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "bad_models.py" && n != "__pycache__")
        .collect();
    assert!(left.is_empty(), "a refused export left files: {left:?}");
    // A batch minimum above 3 is checked at its own sizes (4, 8, 64), and recorded.
    let (code, stderr) = export(&["bad_models:fine", "--out", "fine.pt", "--min-batch", "4"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("batch 4 matches") && !stderr.contains("batch 3 "), "{stderr}");
    let fine = dir.path().join("fine.pt").display().to_string();
    let served = serve(&["--torchscript", &fine]);
    let info = block_on(get_json(&format!("{}/info", served.url)));
    assert_eq!(info.pointer("/endpoints/0/model/batch"), Some(&json!({"min": 4, "max": 64})), "{info}");
}

/// `Mixed` of scripts/byo-models: int64 ids over a dynamic sequence, a float16 scalar per
/// row, and three outputs (float32, an int64 scalar per row, bool).
fn check_mixed(served: &Served, platform: &str) {
    let case = &refs()["mixed"];
    block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{}/predict", served.url);
        let (status, body) = post(&client, &url, &json!({"inputs": case["inputs"]})).await;
        assert_eq!(status, 200, "{body}");
        let out = &body["outputs"];
        let diff = max_diff(&out["pooled"], &case["outputs"]["pooled"], "pooled");
        assert!(diff <= TOLERANCE, "pooled differs from eager PyTorch by {diff}");
        assert_eq!(out["best"], case["outputs"]["best"]);
        assert_eq!(out["positive"], case["outputs"]["positive"]);

        // The same answer as little-endian buffers.
        let body = json!({"inputs": case["inputs"], "output_format": "b64"});
        let (status, b64) = post(&client, &url, &body).await;
        assert_eq!(status, 200, "{b64}");
        let best = &b64["outputs"]["best"];
        assert_eq!((&best["dtype"], &best["shape"]), (&json!("int64"), &json!([3])));
        let bytes = base64_decode(best["b64"].as_str().expect("b64"));
        let values: Vec<i64> =
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        assert_eq!(json!(values), case["outputs"]["best"]);
        assert_eq!(b64["outputs"]["positive"]["dtype"], "bool");

        // The protocol: the signature, and one output asked for by name.
        let meta = get_json(&format!("{}/v2/models/mixed", served.url)).await;
        assert_eq!(meta["platform"], platform);
        assert_eq!(
            meta["inputs"],
            json!([{"name": "ids", "datatype": "INT64", "shape": [-1, -1]}, {"name": "scale", "datatype": "FP16", "shape": [-1]}])
        );
        assert_eq!(
            meta["outputs"],
            json!([
                {"name": "pooled", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "best", "datatype": "INT64", "shape": [-1]},
                {"name": "positive", "datatype": "BOOL", "shape": [-1, -1]}
            ])
        );
        let inputs = json!([
            {"name": "ids", "datatype": "INT64", "shape": [3, 5], "data": leaves(&case["inputs"]["ids"])},
            {"name": "scale", "datatype": "FP16", "shape": [3], "data": case["inputs"]["scale"]}
        ]);
        let infer = format!("{}/v2/models/mixed/infer", served.url);
        let (status, body) =
            post(&client, &infer, &json!({"inputs": inputs, "outputs": [{"name": "best"}]})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outputs"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body["outputs"][0]["name"], "best");
        assert_eq!(body["outputs"][0]["data"], case["outputs"]["best"]);
    });
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

#[test]
fn several_outputs_of_several_dtypes_answer_as_eager_pytorch_in_both_formats() {
    let aoti = serve_file("--aoti", "mixed.pt2", &[]);
    check_mixed(&aoti, "pytorch_aoti");
    // volt_export found the ids' range from the embedding's 50 rows.
    let past = json!({"inputs": {"ids": [[1, 50]], "scale": [1.0]}});
    let (status, message) = refused(&aoti, "/predict", past.clone());
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("value 50 in row 0 is outside 0..50"), "{message}");

    let ts = serve_file("--torchscript", "mixed.pt", &[]);
    check_mixed(&ts, "pytorch_torchscript");
    // TorchScript records no range (nothing to find it from): the module itself refuses
    // the id, a 500 for that request alone, and the server goes on.
    let (status, message) = refused(&ts, "/predict", past);
    assert_eq!(status, 500, "{message}");
    assert!(message.contains("index out of range"), "{message}");
    check_mixed(&ts, "pytorch_torchscript");
}
