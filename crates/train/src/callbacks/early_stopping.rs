//! Lightning's EarlyStopping during `fit` (its options and rule are volt-config's).
use super::{parse_state, Callback, CallbackContext, FitPlan};
use crate::error::Result;
use serde_json::Value;
pub use volt_config::callbacks::{EarlyStopping, EarlyStoppingState};

fn check(es: &mut EarlyStopping, ctx: &mut CallbackContext) -> Result<()> {
    // fast_dev_run is a smoke test: Lightning does not stop it early.
    if ctx.fast_dev_run {
        return Ok(());
    }
    let current = match ctx.monitored("EarlyStopping", &es.monitor) {
        Ok(v) => v,
        Err(e) if es.strict => return Err(e),
        Err(e) => {
            tracing::warn!("{e}; not checked (strict = false)");
            return Ok(());
        }
    };
    if let Some(reason) = es.observe(current, ctx.progress.epoch) {
        ctx.request_stop(format!("EarlyStopping: {reason}"));
    }
    Ok(())
}

impl Callback for EarlyStopping {
    fn name(&self) -> String {
        format!("EarlyStopping{{monitor={},mode={:?}}}", self.monitor, self.mode)
    }
    fn setup(&mut self, plan: &FitPlan) -> Result<()> {
        self.validate()?;
        // Lightning decides this in its setup too: validation more often than once an
        // epoch is checked after each validation run.
        let at_epoch_end = *self.check_on_train_epoch_end.get_or_insert(plan.validates_once_per_epoch);
        if !plan.has_validation && !plan.fast_dev_run {
            let m = &self.monitor;
            if at_epoch_end {
                tracing::warn!(
                    "no validation will run, so EarlyStopping(monitor=\"{m}\") checks at the end of each training \
                     epoch and needs a training metric named \"{m}\""
                );
            } else {
                tracing::warn!("no validation will run, so EarlyStopping(monitor=\"{m}\") never checks");
            }
        }
        Ok(())
    }
    fn on_validation_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.check_on_train_epoch_end == Some(true) {
            return Ok(());
        }
        check(self, ctx)
    }
    fn on_train_epoch_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.check_on_train_epoch_end != Some(true) {
            return Ok(());
        }
        check(self, ctx)
    }
    fn state_dict(&self) -> Value {
        serde_json::to_value(&self.state).unwrap_or(Value::Null)
    }
    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        self.state = parse_state(&self.name(), state)?;
        Ok(())
    }
}
