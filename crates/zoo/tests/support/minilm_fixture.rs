//! The minilm reference fixture and model folder, shared by volt-zoo's parity test and the
//! CLI's serving test (each includes this file with `#[path]`).
use std::path::PathBuf;

/// The repository root (every crate sits at `crates/<name>`).
pub fn repo() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../..")
}

/// The model folder scripts/setup links as .minilm.
pub fn model_dir() -> PathBuf {
    let dir = repo().join(".minilm");
    assert!(dir.join("model.safetensors").is_file(), "{} is missing: run scripts/setup", dir.display());
    dir
}

/// Vectors sentence-transformers made once (fixtures/make_minilm_reference.py).
#[derive(serde::Deserialize)]
pub struct Reference {
    pub sentences: Vec<String>,
    pub tokens: Vec<usize>,
    pub embeddings: Vec<Vec<f32>>,
}

pub fn reference() -> Reference {
    let path = repo().join("crates/zoo/tests/fixtures/minilm_reference.json");
    serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("fixture JSON")
}

/// Cosine similarity, computed in f64.
pub fn cosine<A: Copy + Into<f64>, B: Copy + Into<f64>>(a: &[A], b: &[B]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x).into() * (*y).into()).sum();
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(&mut a.iter().map(|x| (*x).into())) * norm(&mut b.iter().map(|x| (*x).into())))
}
