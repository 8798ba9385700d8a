//! The bodies of volt's fuzz targets: one function per parser of what a user or a client
//! hands volt, each taking arbitrary bytes. A target must never panic, hang or grow
//! without bound; where a parser has an inverse, a value it accepts must also survive
//! the round trip. `fuzz/` runs these under libFuzzer (`scripts/fuzz TARGET SECONDS`);
//! `tests/corpus.rs` replays every corpus file as an ordinary test.
//!
//! Nothing here links libtorch, so the targets build in seconds.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use volt_config::loader::{self, ConfigError};
use volt_config::{OptimizerConfig, OptimizerSpec, RunConfig};
use volt_formats::gguf::Gguf;
use volt_formats::{checkpoint, metrics_csv, tensorboard, Metrics};
use volt_serve::openai::{ChatRequest, EmbeddingsRequest};

/// A target's body: arbitrary bytes in, a panic on a defect.
pub type Target = fn(&[u8]);

/// Every target, by the name `cargo fuzz` and the corpus folders use.
pub const TARGETS: [(&str, Target); 8] = [
    ("config", config),
    ("checkpoint", checkpoint_file),
    ("tensorboard", tensorboard_events),
    ("metrics_csv", metrics_csv_file),
    ("chat_request", chat_request),
    ("embeddings_request", embeddings_request),
    ("digits_request", digits_request),
    ("gguf", gguf_file),
];

/// A model section like digits-mlp's, with the other shapes model configs have.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A size.
    pub hidden: usize,
    /// A rate.
    pub lr: f64,
    /// Another.
    pub weight_decay: f64,
    /// A name.
    pub name: String,
    /// A list.
    pub layers: Vec<u32>,
}

/// A data section like the zoo's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// Samples per batch.
    pub batch_size: usize,
    /// Shuffle seed.
    pub seed: Option<u64>,
    /// Batches prefetched.
    pub prefetch: usize,
}

/// The config loader and dotted overrides: the first byte picks TOML or YAML, the text up
/// to the first `\x01` is the file, each later line an override `key=value`. A config
/// that loads must print as TOML (`--print_config`, `config.toml`) and load back equal.
pub fn config(data: &[u8]) {
    let Some((&format, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let (file, overrides) = text.split_once('\u{1}').unwrap_or((&text, ""));
    let path = if format % 2 == 0 { "fuzz.toml" } else { "fuzz.yaml" };
    let files: Vec<Value> = loader::parse_text(Path::new(path), file).into_iter().collect();
    let overrides: Vec<(String, String)> = overrides
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let defaults = RunConfig::<ModelSection, DataSection>::default();
    let Ok(config) = loader::load(&defaults, files, &overrides) else { return };
    let valid = config.validate().is_ok();
    let _ = volt_config::apply_optimizer(
        OptimizerConfig::from(OptimizerSpec::adamw(1e-3)),
        &config.optimizer,
        &config.lr_scheduler,
    );
    if let Some(mc) = &config.callbacks.model_checkpoint {
        let metrics: Metrics = [("val_loss".to_owned(), 0.25), ("val_acc".to_owned(), f64::NAN)].into();
        let _ = mc.format_name(3, 1 << 40, &metrics);
    }
    if !valid {
        return;
    }
    let toml = match loader::to_toml(&config) {
        Ok(t) => t,
        Err(e) => panic!("a valid configuration must print as TOML: {e}\n{config:#?}"),
    };
    let reread = reload(&defaults, &toml);
    assert_eq!(
        reread.as_ref().ok(),
        Some(&config),
        "the printed configuration must load back equal:\n{toml}"
    );
}

fn reload(
    defaults: &RunConfig<ModelSection, DataSection>,
    toml: &str,
) -> Result<RunConfig<ModelSection, DataSection>, ConfigError> {
    let tree = loader::parse_text(Path::new("printed.toml"), toml)?;
    loader::load(defaults, vec![tree], &[])
}

/// A checkpoint file: the full parse and the header-only read agree, and an accepted
/// trainer state writes and reads back equal.
pub fn checkpoint_file(data: &[u8]) {
    let full = checkpoint::parse(data);
    let header = checkpoint::read_state(&mut &data[..]);
    if let Ok((state, tensors)) = &full {
        assert_eq!(header.as_ref().ok(), Some(state), "the header read must agree with the full parse");
        for (name, view) in tensors.tensors() {
            let elements: usize = view.shape().iter().product();
            assert_eq!(view.data().len(), (elements * view.dtype().bitsize()).div_ceil(8), "tensor {name}");
        }
    }
    if let Ok(state) = header {
        let bytes = checkpoint::serialize(Vec::<(&str, safetensors::tensor::TensorView<'_>)>::new(), &state)
            .unwrap_or_else(|e| panic!("an accepted state must write: {e}"));
        let reread = checkpoint::parse(&bytes).map(|(s, _)| s);
        assert_eq!(reread.as_ref().ok(), Some(&state), "the state must read back equal");
    }
}

/// A TensorBoard event file: whatever it holds is read without a panic; scalars written
/// from the input's bytes read back as written.
pub fn tensorboard_events(data: &[u8]) {
    let _ = tensorboard::read_scalars(data);
    let scalars: Vec<(String, f32)> = data
        .chunks(8)
        .map(|c| {
            let tag = String::from_utf8_lossy(&c[..c.len().min(4)]).into_owned();
            let value = c.get(4..8).map_or(0.0, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            (tag, value)
        })
        .collect();
    let step = data.len() as u64 * 7919;
    let mut file = tensorboard::record(&tensorboard::file_version_event(1.5));
    file.extend(tensorboard::record(&tensorboard::scalars_event(
        2.5,
        step,
        scalars.iter().map(|(t, v)| (t.as_str(), *v)),
    )));
    let read = tensorboard::read_scalars(&file).unwrap_or_else(|e| panic!("volt's own file must read: {e}"));
    assert_eq!(read.len(), scalars.len());
    for (got, (tag, value)) in read.iter().zip(&scalars) {
        assert_eq!((&got.tag, got.step, got.value.to_bits()), (tag, step, value.to_bits()));
    }
}

/// `metrics.csv`: an accepted file writes back and reads back with the same rows
/// (NaN compares equal to NaN here).
pub fn metrics_csv_file(data: &[u8]) {
    let Ok((header, rows)) = metrics_csv::parse(data) else { return };
    let bytes = metrics_csv::write(&header, &rows, true).unwrap_or_else(|e| panic!("rows must write: {e}"));
    let (header2, rows2) =
        metrics_csv::parse(&bytes).unwrap_or_else(|e| panic!("written rows must read: {e}"));
    assert_eq!(header2, header);
    assert_eq!(rows2.len(), rows.len());
    for (a, b) in rows.iter().zip(&rows2) {
        let bits = |m: &Metrics| m.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b));
    }
}

fn json(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

/// `/v1/chat/completions` bodies: an accepted request holds only values in range.
pub fn chat_request(data: &[u8]) {
    let Some(body) = json(data) else { return };
    let Ok(request) = ChatRequest::from_json(&body) else { return };
    assert!(!request.messages.is_empty());
    assert!(request.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
    assert!(request.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    for p in [request.presence_penalty, request.frequency_penalty] {
        assert!((-2.0..=2.0).contains(&p), "penalty {p}");
    }
    let _ = request.refuse_unsupported(false);
    let _ = request.refuse_unsupported(true);
}

/// `/v1/embeddings` bodies, for a model that cannot shorten its vectors and one that can.
pub fn embeddings_request(data: &[u8]) {
    let Some(body) = json(data) else { return };
    let _ = EmbeddingsRequest::from_json(&body, None);
    if let Ok(r) = EmbeddingsRequest::from_json(&body, Some(384)) {
        assert!(!r.input.is_empty() && r.input.len() <= volt_serve::openai::MAX_EMBEDDING_INPUTS);
        assert!(r.dimensions.is_none_or(|d| (1..=384).contains(&d)));
    }
}

/// digits-mlp's `/predict` body (`{"pixels": [64 numbers in 0..16]}`), decoded by the
/// helper its API calls.
pub fn digits_request(data: &[u8]) {
    let Some(body) = json(data) else { return };
    if let Ok(pixels) = volt_serve::fields::number_list(&body, "pixels", 64, 0.0..=16.0) {
        assert!(pixels.len() == 64 && pixels.iter().all(|x| (0.0..=16.0).contains(x)));
    }
}

/// A GGUF file: the header reads or is refused, and every tensor whose data is there
/// dequantizes to exactly as many values as its dimensions say.
pub fn gguf_file(data: &[u8]) {
    let Ok(g) = Gguf::parse(data) else { return };
    for t in &g.tensors {
        if let Ok(values) = g.dequantize(data, t) {
            assert_eq!(values.len() as u64, t.len(), "tensor {}", t.name);
        }
    }
}
