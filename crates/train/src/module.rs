//! The user's side of training: [`VoltModule`], Lightning's `LightningModule`.
use crate::data::Batch;
use crate::error::Result;
use crate::metrics::{LogOptions, Loggable, Record, Stage};
use crate::optim::OptimizerConfig;
use serde_json::Value;
use tch::{nn, Device, Tensor};

/// Where a step runs and what it logs; passed to every `*_step`.
pub struct StepContext {
    pub(crate) stage: Stage,
    pub(crate) epoch: usize,
    pub(crate) global_step: u64,
    pub(crate) batch_idx: usize,
    pub(crate) batch_size: usize,
    pub(crate) device: Device,
    pub(crate) records: Vec<Record>,
}

impl StepContext {
    pub(crate) fn new(stage: Stage, device: Device) -> Self {
        StepContext {
            stage,
            epoch: 0,
            global_step: 0,
            batch_idx: 0,
            batch_size: 1,
            device,
            records: Vec::new(),
        }
    }

    /// Logs `value` under `name` with the defaults of this stage: every step in
    /// training, the batch-size-weighted epoch mean in validation and test.
    pub fn log(&mut self, name: &str, value: impl Loggable) {
        self.log_with(name, value, LogOptions::default());
    }

    /// Logs `value` under `name` with explicit options.
    pub fn log_with(&mut self, name: &str, value: impl Loggable, opts: LogOptions) {
        let record = Record::new(self.stage, name, value.to_f64(), opts, self.batch_size);
        self.records.push(record);
    }

    /// The loop this step belongs to.
    pub fn stage(&self) -> Stage {
        self.stage
    }
    /// Current epoch, from 0.
    pub fn epoch(&self) -> usize {
        self.epoch
    }
    /// Optimizer steps taken so far.
    pub fn global_step(&self) -> u64 {
        self.global_step
    }
    /// Index of this batch within the epoch (or evaluation run).
    pub fn batch_idx(&self) -> usize {
        self.batch_idx
    }
    /// The device the model and batch live on.
    pub fn device(&self) -> Device {
        self.device
    }
}

/// A model with its loss, metrics and optimizer choice; the Trainer does the rest.
///
/// Only `var_store`, `training_step` and `configure_optimizers` are required. The
/// hooks are named for when they run, as in Lightning.
pub trait VoltModule {
    /// What the data loaders yield.
    type Batch: Batch;
    /// What `predict_step` returns for one batch.
    type Prediction;

    /// The parameters (and buffers) of the model.
    fn var_store(&self) -> &nn::VarStore;

    /// Computes the loss of one training batch; the Trainer does backward and the step.
    fn training_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> Result<Tensor>;

    /// Evaluates one validation batch; log metrics through `ctx`.
    fn validation_step(&mut self, _batch: &Self::Batch, _ctx: &mut StepContext) -> Result<()> {
        Ok(())
    }

    /// Evaluates one test batch; log metrics through `ctx`.
    fn test_step(&mut self, _batch: &Self::Batch, _ctx: &mut StepContext) -> Result<()> {
        Ok(())
    }

    /// Predicts one batch.
    fn predict_step(&mut self, _batch: &Self::Batch, _ctx: &mut StepContext) -> Result<Self::Prediction> {
        Err(crate::Error::User("this module does not implement predict_step".into()))
    }

    /// The optimizer and, optionally, a learning-rate scheduler.
    fn configure_optimizers(&self) -> OptimizerConfig;

    /// Which variables checkpoints hold: all (default), or only the trainable ones for
    /// a model whose frozen base is loaded from elsewhere (LoRA); the module then
    /// records which base in `on_save_checkpoint` and checks it on load.
    fn saved_variables(&self) -> crate::checkpoint::Saved {
        crate::checkpoint::Saved::All
    }

    /// Hyperparameters saved in checkpoints and `hparams.yaml`.
    fn hparams(&self) -> Value {
        Value::Null
    }

    /// Runs once when `fit` starts, after a checkpoint (if any) was restored.
    fn on_fit_start(&mut self) -> Result<()> {
        Ok(())
    }
    /// Runs once when `fit` ends without an error (`on_exception` runs instead), as
    /// Lightning's hook.
    fn on_fit_end(&mut self) -> Result<()> {
        Ok(())
    }
    /// Runs once when `fit` fails with `error`, before the error reaches the caller.
    fn on_exception(&mut self, _error: &crate::Error) {}
    /// Runs at the start of each training epoch.
    fn on_train_epoch_start(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// Runs at the end of each training epoch.
    fn on_train_epoch_end(&mut self, _epoch: usize) -> Result<()> {
        Ok(())
    }
    /// Runs after each validation run, once its epoch metrics are known.
    fn on_validation_epoch_end(&mut self, _metrics: &crate::Metrics) -> Result<()> {
        Ok(())
    }
    /// Extra user state to store in a checkpoint.
    fn on_save_checkpoint(&self) -> Value {
        Value::Null
    }
    /// Restores what `on_save_checkpoint` stored.
    fn on_load_checkpoint(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
}
