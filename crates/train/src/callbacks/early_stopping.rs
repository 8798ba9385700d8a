//! Lightning's EarlyStopping: stop when a metric stops improving, or crosses a threshold.
use super::{parse_state, Callback, CallbackContext};
use crate::error::Result;
use crate::schedule::Mode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Stops `fit` when `monitor` has not improved by `min_delta` for `patience` checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// The metric to watch.
    pub monitor: String,
    /// Smallest change that counts as an improvement.
    pub min_delta: f64,
    /// Checks without improvement before stopping.
    pub patience: usize,
    /// Whether smaller or larger is better.
    pub mode: Mode,
    /// Stop as soon as the metric is better than this.
    pub stopping_threshold: Option<f64>,
    /// Stop as soon as the metric is worse than this.
    pub divergence_threshold: Option<f64>,
    /// Stop when the metric is NaN or infinite.
    pub check_finite: bool,
    /// Check at the end of the training epoch instead of after validation.
    pub check_on_train_epoch_end: bool,
    /// What it has seen so far (restored from checkpoints on resume).
    #[serde(skip)]
    pub state: EarlyStoppingState,
}

/// What EarlyStopping remembers across resumes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStoppingState {
    /// Checks since the last improvement.
    pub wait_count: usize,
    /// Best value so far.
    pub best_score: Option<f64>,
    /// Epoch at which it asked to stop.
    pub stopped_epoch: Option<usize>,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: "val_loss".into(),
            min_delta: 0.0,
            patience: 3,
            mode: Mode::Min,
            stopping_threshold: None,
            divergence_threshold: None,
            check_finite: true,
            check_on_train_epoch_end: false,
            state: EarlyStoppingState::default(),
        }
    }
}

impl EarlyStopping {
    /// Watches `monitor` with `patience` and the other defaults.
    pub fn new(monitor: &str, mode: Mode, patience: usize) -> Self {
        EarlyStopping { monitor: monitor.to_owned(), mode, patience, ..Self::default() }
    }

    /// Applies one observation; returns why to stop, if it should.
    pub fn observe(&mut self, current: f64, epoch: usize) -> Option<String> {
        let m = &self.monitor;
        let reason = if self.check_finite && !current.is_finite() {
            Some(format!("{m} = {current} is not finite"))
        } else if self.stopping_threshold.is_some_and(|t| self.mode.better(current, t)) {
            Some(format!("{m} = {current} reached the stopping threshold {:?}", self.stopping_threshold))
        } else if self.divergence_threshold.is_some_and(|t| self.mode.better(t, current)) {
            Some(format!("{m} = {current} is past the divergence threshold {:?}", self.divergence_threshold))
        } else {
            let delta = self.min_delta.abs();
            let improved = match (self.state.best_score, self.mode) {
                _ if !current.is_finite() => false,
                (None, _) => true,
                (Some(best), Mode::Min) => current < best - delta,
                (Some(best), Mode::Max) => current > best + delta,
            };
            if improved {
                self.state.best_score = Some(current);
                self.state.wait_count = 0;
                None
            } else {
                self.state.wait_count += 1;
                (self.state.wait_count >= self.patience).then(|| {
                    format!(
                        "{m} did not improve in the last {} checks; best {:?}",
                        self.state.wait_count, self.state.best_score
                    )
                })
            }
        };
        if reason.is_some() {
            self.state.stopped_epoch = Some(epoch);
        }
        reason
    }

    fn check(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        let current = ctx.monitored("EarlyStopping", &self.monitor)?;
        if let Some(reason) = self.observe(current, ctx.progress.epoch) {
            ctx.request_stop(format!("EarlyStopping: {reason}"));
        }
        Ok(())
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> String {
        format!("EarlyStopping{{monitor={},mode={:?}}}", self.monitor, self.mode)
    }
    fn on_validation_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.check_on_train_epoch_end {
            return Ok(());
        }
        self.check(ctx)
    }
    fn on_train_epoch_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if !self.check_on_train_epoch_end {
            return Ok(());
        }
        self.check(ctx)
    }
    fn state_dict(&self) -> Value {
        serde_json::to_value(&self.state).unwrap_or(Value::Null)
    }
    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        self.state = parse_state(&self.name(), state)?;
        Ok(())
    }
}
