//! volt-formats: the files volt reads and writes, free of libtorch so that they build
//! fast and can be fuzzed: checkpoint headers ([`checkpoint`]), TensorBoard event files
//! ([`tensorboard`]), Lightning's `metrics.csv` ([`metrics_csv`]) and the GGUF files LLMs
//! are downloaded as ([`gguf`]); and the atomic write all of them go through ([`atomic`]).
#![warn(missing_docs)]

pub mod atomic;
pub mod checkpoint;
pub mod gguf;
pub mod metrics_csv;
pub mod tensorboard;

/// What is wrong with a file's contents; the caller adds which file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

impl FormatError {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        FormatError(what.into())
    }
}

/// Metric name → value.
pub type Metrics = std::collections::BTreeMap<String, f64>;
