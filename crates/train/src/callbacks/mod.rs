//! Hooks into the Trainer's loops, and the callbacks Lightning users expect.
mod early_stopping;
mod lr_monitor;
mod model_checkpoint;
mod progress_bar;

pub use early_stopping::{EarlyStopping, EarlyStoppingState};
pub use lr_monitor::LearningRateMonitor;
pub use model_checkpoint::{CheckpointState, ModelCheckpoint};
pub use progress_bar::ProgressBar;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::progress::Progress;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What a callback sees of the run, and what it may ask the Trainer to do.
pub struct CallbackContext<'a> {
    /// Loop position (epoch, global step, batch within the epoch).
    pub progress: &'a Progress,
    /// Latest value of every metric logged so far (Lightning's `callback_metrics`).
    pub metrics: &'a Metrics,
    /// Latest values of the metrics logged with `prog_bar`.
    pub progress_bar_metrics: &'a Metrics,
    /// Learning rate of the optimizer.
    pub lr: f64,
    /// The optimizer's PyTorch class name (`AdamW`, ...).
    pub optimizer_name: &'static str,
    /// The run's `version_N` folder, when logging or checkpointing is on.
    pub log_dir: Option<&'a Path>,
    /// Whether this rank writes files.
    pub is_global_zero: bool,
    /// Whether the run has a validation loop with at least one batch.
    pub has_validation: bool,
    /// Whether a validation run (not the sanity check) has happened in this `fit`: until
    /// then a missing validation metric is expected, not an error (Lightning's rule).
    pub validation_has_run: bool,
    /// `fast_dev_run` is on: no checkpoints, no early stopping (as Lightning).
    pub fast_dev_run: bool,
    /// Batches per training epoch (after limits).
    pub num_training_batches: usize,
    /// The run's epoch limit.
    pub max_epochs: Option<usize>,
    /// The run's step limit.
    pub max_steps: Option<u64>,
    pub(crate) requests: &'a mut Requests,
}

/// What `fit` is about to do, for the checks callbacks make before anything is written.
#[derive(Clone, Copy, Debug)]
pub struct FitPlan<'a> {
    /// The run's `version_N` folder, when logging or checkpointing is on.
    pub log_dir: Option<&'a Path>,
    /// Whether any validation will run (a validation loader and a non-zero limit).
    pub has_validation: bool,
    /// `fast_dev_run` is on.
    pub fast_dev_run: bool,
    /// Whether this rank writes files.
    pub is_global_zero: bool,
    /// Validation is set to run once at the end of every epoch (`val_check_interval = 1.0`,
    /// `check_val_every_n_epoch = 1`), whether or not it has batches.
    pub validates_once_per_epoch: bool,
}

/// Actions callbacks ask for; the Trainer carries them out after the hook returns.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    pub stop: Option<String>,
    pub saves: Vec<PathBuf>,
    pub removals: Vec<PathBuf>,
    pub logs: Metrics,
}

impl CallbackContext<'_> {
    /// Ends `fit` after the current step or epoch, giving the reason.
    pub fn request_stop(&mut self, reason: impl Into<String>) {
        self.requests.stop.get_or_insert(reason.into());
    }
    /// Writes a checkpoint of the current state to `path` (including this callback's state
    /// as it is when the hook returns).
    pub fn save_checkpoint(&mut self, path: impl Into<PathBuf>) {
        self.requests.saves.push(path.into());
    }
    /// Deletes a checkpoint this callback wrote earlier (after any saves of this hook).
    pub fn remove_checkpoint(&mut self, path: impl Into<PathBuf>) {
        self.requests.removals.push(path.into());
    }
    /// Logs a metric at the current step.
    pub fn log(&mut self, name: &str, value: f64) {
        self.requests.logs.insert(name.to_owned(), value);
    }

    /// The value of `monitor`, or an error that lists the metrics there are.
    pub fn monitored(&self, who: &str, monitor: &str) -> Result<f64> {
        Ok(volt_config::callbacks::monitored(self.metrics, who, monitor)?)
    }
}

/// A set of hooks into `fit`, named for when they run. Every hook defaults to nothing.
pub trait Callback: Send {
    /// Unique name; the key of this callback's state in checkpoints.
    fn name(&self) -> String;
    /// Once, before `fit` writes anything: check the callback's options against the run.
    /// An error here stops `fit` with nothing written.
    fn setup(&mut self, _plan: &FitPlan) -> Result<()> {
        Ok(())
    }
    /// Once, after setup and any checkpoint restore, before the sanity check.
    fn on_fit_start(&mut self, _ctx: &mut CallbackContext) -> Result<()> {
        Ok(())
    }
    /// At the start of every training epoch.
    fn on_train_epoch_start(&mut self, _ctx: &mut CallbackContext) -> Result<()> {
        Ok(())
    }
    /// After every optimizer step, with that step's loss.
    fn on_train_batch_end(&mut self, _ctx: &mut CallbackContext, _loss: f64) -> Result<()> {
        Ok(())
    }
    /// After every validation run, once its epoch metrics are in `ctx.metrics`.
    fn on_validation_end(&mut self, _ctx: &mut CallbackContext) -> Result<()> {
        Ok(())
    }
    /// At the end of every training epoch (after that epoch's validation).
    fn on_train_epoch_end(&mut self, _ctx: &mut CallbackContext) -> Result<()> {
        Ok(())
    }
    /// Once, when `fit` ends for any reason but an error.
    fn on_fit_end(&mut self, _ctx: &mut CallbackContext) -> Result<()> {
        Ok(())
    }
    /// Once, when `fit` fails with `error` (instead of `on_fit_end`, as in Lightning).
    fn on_exception(&mut self, _ctx: &mut CallbackContext, _error: &Error) {}
    /// State to store in checkpoints.
    fn state_dict(&self) -> Value {
        Value::Null
    }
    /// Restores what `state_dict` returned.
    fn load_state_dict(&mut self, _state: &Value) -> Result<()> {
        Ok(())
    }
    /// The path of the best checkpoint, for callbacks that track one (`ckpt_path="best"`).
    fn best_model_path(&self) -> Option<PathBuf> {
        None
    }
}

/// Parses a callback's saved state, naming the callback when it does not fit.
pub(crate) fn parse_state<T: serde::de::DeserializeOwned>(name: &str, state: &Value) -> Result<T> {
    serde_json::from_value(state.clone())
        .map_err(|e| Error::Config(format!("checkpoint state of callback {name}: {e}")))
}
