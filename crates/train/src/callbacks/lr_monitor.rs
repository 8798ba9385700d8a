//! Lightning's LearningRateMonitor: logs `lr-<Optimizer>` as training goes.
use super::{Callback, CallbackContext};
use crate::error::Result;
use crate::schedule::Interval;
use serde::{Deserialize, Serialize};

/// Logs the learning rate every step or every epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearningRateMonitor {
    /// `step` or `epoch` (default: step).
    pub logging_interval: Option<Interval>,
}

impl LearningRateMonitor {
    fn log(&self, ctx: &mut CallbackContext) {
        let name = format!("lr-{}", ctx.optimizer_name);
        ctx.log(&name, ctx.lr);
    }
}

impl Callback for LearningRateMonitor {
    fn name(&self) -> String {
        "LearningRateMonitor".into()
    }
    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> Result<()> {
        if self.logging_interval != Some(Interval::Epoch) {
            self.log(ctx);
        }
        Ok(())
    }
    fn on_train_epoch_start(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.logging_interval == Some(Interval::Epoch) {
            self.log(ctx);
        }
        Ok(())
    }
}
