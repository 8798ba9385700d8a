//! Lightning's LearningRateMonitor: logs `lr-<Optimizer>` as training goes.
use super::{Callback, CallbackContext};
use crate::error::Result;
use crate::schedule::Interval;
pub use volt_config::callbacks::LearningRateMonitor;

fn log_lr(ctx: &mut CallbackContext) {
    let name = format!("lr-{}", ctx.optimizer_name);
    ctx.log(&name, ctx.lr);
}

impl Callback for LearningRateMonitor {
    fn name(&self) -> String {
        "LearningRateMonitor".into()
    }
    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> Result<()> {
        if self.logging_interval != Some(Interval::Epoch) {
            log_lr(ctx);
        }
        Ok(())
    }
    fn on_train_epoch_start(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.logging_interval == Some(Interval::Epoch) {
            log_lr(ctx);
        }
        Ok(())
    }
}
