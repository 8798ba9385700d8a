//! Lightning's ModelCheckpoint during `fit`: periodic checkpoints, the top-k by a
//! metric, and `last` (its options are volt-config's).
use super::{parse_state, Callback, CallbackContext, FitPlan};
use crate::checkpoint::LAST_NAME;
use crate::error::{Error, Result};
use crate::schedule::Mode;
use serde_json::Value;
use std::path::PathBuf;
pub use volt_config::callbacks::{CheckpointState, ModelCheckpoint};

fn dir(mc: &ModelCheckpoint, ctx: &CallbackContext) -> Result<PathBuf> {
    match (&mc.dirpath, ctx.log_dir) {
        (Some(d), _) => Ok(d.clone()),
        (None, Some(log_dir)) => Ok(log_dir.join("checkpoints")),
        (None, None) => {
            Err(Error::Config("ModelCheckpoint needs `dirpath` when the run has no log folder".into()))
        }
    }
}

fn save(mc: &mut ModelCheckpoint, ctx: &mut CallbackContext) -> Result<()> {
    // fast_dev_run is a smoke test: Lightning saves nothing during it.
    if !ctx.is_global_zero || ctx.fast_dev_run {
        return Ok(());
    }
    if mc.state.last_saved_step == Some(ctx.progress.global_step) {
        return Ok(());
    }
    let dir = dir(mc, ctx)?;
    mc.state.last_saved_step = Some(ctx.progress.global_step);
    if mc.save_top_k != 0 {
        save_top_k_checkpoint(mc, ctx, &dir)?;
    }
    if mc.save_last {
        let last = dir.join(LAST_NAME);
        ctx.save_checkpoint(&last);
        mc.state.last_model_path = Some(last);
    }
    Ok(())
}

fn save_top_k_checkpoint(
    mc: &mut ModelCheckpoint,
    ctx: &mut CallbackContext,
    dir: &std::path::Path,
) -> Result<()> {
    let score = match &mc.monitor {
        Some(m) => match ctx.metrics.get(m).copied().or_else(|| progress_value(ctx, m)) {
            Some(v) => v,
            // Lightning's rule: an error once validation has run, before that a warning;
            // no top-k checkpoint either way (`last` is still saved).
            None if ctx.validation_has_run => {
                ctx.monitored("ModelCheckpoint", m)?;
                return Ok(());
            }
            None => {
                if !mc.state.warned_missing_monitor {
                    mc.state.warned_missing_monitor = true;
                    tracing::warn!(
                        "ModelCheckpoint(monitor=\"{m}\") found no metric named \"{m}\" before any validation ran \
                         (logged: [{}]); no top-k checkpoint until it is logged, `last` is still saved",
                        ctx.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
                return Ok(());
            }
        },
        None => ctx.progress.global_step as f64,
    };
    if !score.is_finite() {
        // A NaN or infinite value never ranks among the best.
        return Ok(());
    }
    let mode = if mc.monitor.is_some() { mc.mode } else { Mode::Max };
    let k = mc.save_top_k;
    let full = k > 0 && mc.state.best_k_models.len() as i64 >= k;
    let worst = mc
        .state
        .best_k_models
        .iter()
        .enumerate()
        .reduce(|a, b| if mode.better(a.1 .1, b.1 .1) { b } else { a })
        .map(|(i, (_, s))| (i, *s));
    if full && !worst.is_some_and(|(_, w)| mode.better(score, w)) {
        return Ok(());
    }
    let mut path = dir.join(format!(
        "{}.safetensors",
        mc.format_name(ctx.progress.epoch, ctx.progress.global_step, ctx.metrics)?
    ));
    let mut n = 1;
    while path.exists() || mc.state.best_k_models.iter().any(|(p, _)| *p == path) {
        path = dir.join(format!(
            "{}-v{n}.safetensors",
            mc.format_name(ctx.progress.epoch, ctx.progress.global_step, ctx.metrics)?
        ));
        n += 1;
    }
    ctx.save_checkpoint(&path);
    if full {
        if let Some((i, _)) = worst {
            let (evicted, _) = mc.state.best_k_models.remove(i);
            ctx.remove_checkpoint(evicted);
        }
    }
    mc.state.best_k_models.push((path, score));
    let best =
        mc.state.best_k_models.iter().reduce(|a, b| if mode.better(b.1, a.1) { b } else { a }).cloned();
    if let Some((p, s)) = best {
        mc.state.best_model_path = Some(p);
        mc.state.best_model_score = mc.monitor.as_ref().map(|_| s);
    }
    Ok(())
}

/// `epoch` and `step` can be monitored without being logged, as in Lightning (monitor
/// `step` in mode `max` keeps the latest k).
fn progress_value(ctx: &CallbackContext, name: &str) -> Option<f64> {
    match name {
        "epoch" => Some(ctx.progress.epoch as f64),
        "step" => Some(ctx.progress.global_step as f64),
        _ => None,
    }
}

fn on_train_epoch_end_saves(mc: &ModelCheckpoint, ctx: &CallbackContext) -> bool {
    mc.every_n_train_steps.is_none() && mc.save_on_train_epoch_end.unwrap_or(!ctx.has_validation)
}

fn epoch_due(mc: &ModelCheckpoint, ctx: &CallbackContext) -> bool {
    let n = mc.every_n_epochs.unwrap_or(1);
    n > 0 && (ctx.progress.epoch + 1) % n == 0
}

impl Callback for ModelCheckpoint {
    fn name(&self) -> String {
        format!(
            "ModelCheckpoint{{monitor={},mode={:?}}}",
            self.monitor.as_deref().unwrap_or("None"),
            self.mode
        )
    }

    fn setup(&mut self, plan: &FitPlan) -> Result<()> {
        self.validate()?;
        // A template that cannot be formatted fails now rather than at the first save.
        self.format_name(0, 0, &Default::default())?;
        if plan.fast_dev_run {
            return Ok(());
        }
        if plan.is_global_zero && self.dirpath.is_none() && plan.log_dir.is_none() {
            return Err(Error::Config(
                "ModelCheckpoint needs `dirpath` when the run has no log folder".into(),
            ));
        }
        if let (Some(m), false, true) = (&self.monitor, plan.has_validation, self.save_top_k != 0) {
            self.state.warned_missing_monitor = true;
            tracing::warn!(
                "no validation will run, so ModelCheckpoint(monitor=\"{m}\") can rank checkpoints only by a \
                 training metric named \"{m}\"; without one only `last` is saved"
            );
        }
        Ok(())
    }

    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> Result<()> {
        match self.every_n_train_steps {
            Some(n) if n > 0 && ctx.progress.global_step % n == 0 => save(self, ctx),
            _ => Ok(()),
        }
    }

    fn on_validation_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if on_train_epoch_end_saves(self, ctx) || self.every_n_train_steps.is_some() {
            return Ok(());
        }
        if epoch_due(self, ctx) {
            save(self, ctx)?;
        }
        Ok(())
    }

    fn on_train_epoch_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if on_train_epoch_end_saves(self, ctx) && epoch_due(self, ctx) {
            save(self, ctx)?;
        }
        Ok(())
    }

    fn state_dict(&self) -> Value {
        serde_json::to_value(&self.state).unwrap_or(Value::Null)
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        self.state = parse_state(&self.name(), state)?;
        Ok(())
    }

    fn best_model_path(&self) -> Option<PathBuf> {
        self.state.best_model_path.clone()
    }
}
