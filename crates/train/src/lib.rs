//! volt-train: the Lightning workflow for libtorch models, in Rust.
//!
//! You write a [`VoltModule`] (the model, its loss, its optimizer choice) and a
//! [`DataModule`]; the [`Trainer`] runs the loops, devices, checkpoints, logging and
//! callbacks. [`Fabric`] is the layer underneath, for writing your own loop.
#![warn(missing_docs)]

pub mod callbacks;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod data;
pub mod ddp;
mod error;
pub mod fabric;
mod ffi;
pub mod grad_scaler;
pub mod job_run;
pub mod loggers;
pub mod lora;
pub mod metrics;
pub mod module;
pub mod optim;
pub mod predictions;
mod process_group;
pub mod progress;
pub mod schedule;
mod signals;
pub mod strategy;
pub mod summary;
pub mod trainer;

pub use callbacks::{
    Callback, CallbackContext, EarlyStopping, FitPlan, LearningRateMonitor, ModelCheckpoint, ProgressBar,
};
pub use checkpoint::{Checkpoint, CkptPath, TrainingState};
pub use cluster::ClusterEnv;
pub use config::{BatchLimit, FastDevRun, TrainerConfig};
pub use data::{Batch, DataLoader, DataModule, Dataset, LoaderOptions, Sampler};
pub use ddp::{Ddp, DdpOptions};
pub use error::{Error, Result};
pub use fabric::{Fabric, FabricConfig, Precision};
pub use loggers::{CsvLogger, Logger, LoggerKind, TensorBoardLogger};
pub use lora::{LoraConfig, LoraLinear};
pub use metrics::{LogOptions, Metrics, Stage};
pub use module::{StepContext, VoltModule};
pub use optim::{ClipAlgorithm, Optimizer, OptimizerConfig, OptimizerSpec};
pub use predictions::{PredictionFile, PredictionRows};
pub use progress::Progress;
pub use schedule::{Interval, LrScheduler, Mode, SchedulerConfig, SchedulerSpec};
pub use strategy::{Accelerator, CommStats, ReduceOp, SingleDevice, Strategy, StrategyKind};
pub use trainer::{FitOutcome, Trainer};

/// Re-export of the `tch` crate volt is built on, so users get the same version.
pub use tch;

/// Seeds libtorch's generators; call it before building the model for reproducible runs.
pub fn seed_everything(seed: u64) {
    Fabric::seed_everything(seed);
}
