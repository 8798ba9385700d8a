//! volt-config: what a run is configured with, free of libtorch so that it builds fast
//! and can be fuzzed.
//!
//! The option types carry Lightning's and PyTorch's names and defaults; [`loader`]
//! merges TOML/YAML files and dotted overrides into them with errors that name the key.
//! volt-train re-exports the types where its users expect them.
#![warn(missing_docs)]

pub mod callbacks;
pub mod job;
pub mod loader;
pub mod optim;
mod ranges;
pub mod run;
pub mod schedule;
pub mod trainer;

pub use callbacks::{
    CheckpointState, EarlyStopping, EarlyStoppingState, LearningRateMonitor, ModelCheckpoint,
};
pub use job::{BackendKind, Fleet, Host, JobSpec, LoadedJob, Resources};
pub use loader::ConfigError;
pub use optim::{ClipAlgorithm, OptimizerConfig, OptimizerSpec};
pub use run::{apply_optimizer, CallbacksConfig, OptimizerOverrides, RunConfig};
pub use schedule::{Interval, Mode, SchedulerConfig, SchedulerSpec, SchedulerState};
pub use trainer::{
    Accelerator, BatchLimit, FastDevRun, LoggerKind, Precision, StrategyKind, TrainerConfig,
    DEFAULT_DDP_TIMEOUT_S,
};
