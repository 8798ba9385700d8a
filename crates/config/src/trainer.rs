//! The Trainer's options, with Lightning's names and defaults.
use crate::optim::ClipAlgorithm;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Seconds a `ddp` rendezvous or collective waits by default (PyTorch's 30 minutes).
pub const DEFAULT_DDP_TIMEOUT_S: u64 = 1800;

/// Which hardware to train on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// A GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU (error when none is visible).
    #[serde(alias = "gpu")]
    Cuda,
}

/// Which strategy, as in Lightning's `strategy` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Single device unless several are asked for.
    #[default]
    Auto,
    /// One process, one device.
    SingleDevice,
    /// Distributed data parallel: one process per device, gradients averaged.
    Ddp,
}

/// Numeric precision of training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// Float32 weights and math.
    #[default]
    #[serde(rename = "32-true", alias = "32")]
    F32,
    /// bfloat16 autocast over float32 weights and optimizer state (Lightning's
    /// `bf16-mixed`).
    #[serde(rename = "bf16-mixed", alias = "bf16")]
    Bf16Mixed,
    /// bfloat16 weights, optimizer state and math (Lightning's `bf16-true`).
    #[serde(rename = "bf16-true")]
    Bf16True,
    /// float16 autocast with a gradient scaler; CUDA only (Lightning's `16-mixed`).
    #[serde(rename = "16-mixed", alias = "16")]
    F16Mixed,
}

impl Precision {
    /// Lightning's name.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "32-true",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::Bf16True => "bf16-true",
            Precision::F16Mixed => "16-mixed",
        }
    }
}

/// The loggers the Trainer can create from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoggerKind {
    /// `metrics.csv` in Lightning's CSVLogger layout.
    Csv,
    /// TensorBoard event files.
    #[serde(alias = "tb")]
    TensorBoard,
}

/// A number of batches, or a fraction of an epoch (Lightning's int-or-float options).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchLimit {
    /// Exactly this many batches (at most the epoch's length).
    Count(usize),
    /// This fraction of the epoch's batches.
    Fraction(f64),
}

impl Default for BatchLimit {
    fn default() -> Self {
        BatchLimit::Fraction(1.0)
    }
}

impl BatchLimit {
    /// How many of `available` batches to use.
    pub fn resolve(self, available: usize) -> usize {
        match self {
            BatchLimit::Count(n) => n.min(available),
            BatchLimit::Fraction(f) => ((available as f64) * f.clamp(0.0, 1.0)) as usize,
        }
    }
}

/// `fast_dev_run`: `true` means one batch, a number means that many.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FastDevRun {
    /// On (one batch) or off.
    Flag(bool),
    /// This many batches.
    Batches(usize),
}

impl Default for FastDevRun {
    fn default() -> Self {
        FastDevRun::Flag(false)
    }
}

impl FastDevRun {
    /// Batches per loop when on.
    pub fn batches(self) -> Option<usize> {
        match self {
            FastDevRun::Flag(false) | FastDevRun::Batches(0) => None,
            FastDevRun::Flag(true) => Some(1),
            FastDevRun::Batches(n) => Some(n),
        }
    }
}

/// Every Trainer option. `Default` gives Lightning's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Stop after this many epochs (default 1000 when `max_steps` is unset too).
    pub max_epochs: Option<usize>,
    /// Stop after this many optimizer steps.
    pub max_steps: Option<u64>,
    /// Batches whose gradients are summed before each optimizer step.
    pub accumulate_grad_batches: usize,
    /// Clip gradients at this value before each step.
    pub gradient_clip_val: Option<f64>,
    /// `norm` (global L2 norm) or `value` (element-wise).
    pub gradient_clip_algorithm: ClipAlgorithm,
    /// Validate every this fraction of an epoch, or every this many batches.
    pub val_check_interval: BatchLimit,
    /// Validate every this many epochs; `"none"` (or YAML's `null`) counts
    /// `val_check_interval` in training batches across epochs instead (Lightning's `None`).
    #[serde(with = "count_or_none")]
    pub check_val_every_n_epoch: Option<usize>,
    /// Training batches per epoch (fraction or count).
    pub limit_train_batches: BatchLimit,
    /// Validation batches per run.
    pub limit_val_batches: BatchLimit,
    /// Test batches.
    pub limit_test_batches: BatchLimit,
    /// Prediction batches.
    pub limit_predict_batches: BatchLimit,
    /// Run this many batches of each loop once, without logs or checkpoints, to smoke-test.
    pub fast_dev_run: FastDevRun,
    /// Validation batches run before training to catch bugs early.
    pub num_sanity_val_steps: usize,
    /// Log training-step metrics every this many optimizer steps.
    pub log_every_n_steps: u64,
    /// Root of `<name>/version_N/` folders.
    pub default_root_dir: PathBuf,
    /// Experiment name: the folder under `default_root_dir`.
    pub name: String,
    /// Use this version number instead of the next free one.
    pub version: Option<u32>,
    /// Seed of initialisation-independent randomness (shuffling, dropout).
    pub seed: Option<u64>,
    /// Show a progress bar.
    pub enable_progress_bar: bool,
    /// Write checkpoints (a default ModelCheckpoint when none is given, and `last`).
    pub enable_checkpointing: bool,
    /// Print the model summary when fit starts.
    pub enable_model_summary: bool,
    /// Loggers to write with (`csv`, `tensorboard`); empty turns logging off.
    pub loggers: Vec<LoggerKind>,
    /// cpu, cuda (gpu) or auto.
    pub accelerator: Accelerator,
    /// Devices per process.
    pub devices: usize,
    /// Nodes of a `ddp` job.
    pub num_nodes: usize,
    /// How devices cooperate (`auto`, `single_device`, `ddp`).
    pub strategy: StrategyKind,
    /// Seconds a `ddp` rendezvous or collective may wait for the other ranks.
    pub ddp_timeout_s: u64,
    /// Numeric precision.
    pub precision: Precision,
    /// libtorch intra-op threads.
    pub num_threads: Option<usize>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            max_epochs: None,
            max_steps: None,
            accumulate_grad_batches: 1,
            gradient_clip_val: None,
            gradient_clip_algorithm: ClipAlgorithm::Norm,
            val_check_interval: BatchLimit::Fraction(1.0),
            check_val_every_n_epoch: Some(1),
            limit_train_batches: BatchLimit::default(),
            limit_val_batches: BatchLimit::default(),
            limit_test_batches: BatchLimit::default(),
            limit_predict_batches: BatchLimit::default(),
            fast_dev_run: FastDevRun::default(),
            num_sanity_val_steps: 2,
            log_every_n_steps: 50,
            default_root_dir: PathBuf::from("."),
            name: "lightning_logs".into(),
            version: None,
            seed: None,
            enable_progress_bar: true,
            enable_checkpointing: true,
            enable_model_summary: true,
            loggers: vec![LoggerKind::Csv, LoggerKind::TensorBoard],
            accelerator: Accelerator::Auto,
            devices: 1,
            num_nodes: 1,
            strategy: StrategyKind::Auto,
            ddp_timeout_s: DEFAULT_DDP_TIMEOUT_S,
            precision: Precision::F32,
            num_threads: None,
        }
    }
}

impl TrainerConfig {
    /// Everything off that writes or prints: no loggers, checkpoints, bar or summary.
    pub fn quiet(mut self) -> Self {
        self.loggers.clear();
        self.enable_checkpointing = false;
        self.enable_progress_bar = false;
        self.enable_model_summary = false;
        self
    }

    /// The effective epoch limit: Lightning's 1000 when neither limit is set.
    pub fn epoch_limit(&self) -> Option<usize> {
        match (self.max_epochs, self.max_steps) {
            (None, None) => Some(1000),
            (e, _) => e,
        }
    }
}

/// `check_val_every_n_epoch`: a count, or `"none"` for Lightning's `None` (TOML has no null).
mod count_or_none {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Count(usize),
        Word(String),
    }

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_u64(*n as u64),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            Some(Raw::Count(n)) => Ok(Some(n)),
            None => Ok(None),
            Some(Raw::Word(w)) if w.eq_ignore_ascii_case("none") || w == "null" => Ok(None),
            Some(Raw::Word(w)) => Err(serde::de::Error::custom(format!(
                "invalid value: \"{w}\", expected a whole number or \"none\""
            ))),
        }
    }
}
