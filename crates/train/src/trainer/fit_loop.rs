//! The fit loop: the sanity check, then epochs until a limit, a callback or a signal
//! stops the run (Lightning's `fit_loop.py`).
use super::{hook, Run, StopVote, Trainer};
use crate::data::DataLoader;
use crate::error::Result;
use crate::metrics::Stage;
use crate::module::VoltModule;
use crate::progress::Progress;
use crate::signals::StopOnSignal;
use std::time::{Duration, Instant};

impl Trainer {
    /// Returns (steps taken, training wall time, time to first step).
    pub(super) fn fit_loop<M: VoltModule>(
        &mut self,
        module: &mut M,
        train: &DataLoader<M::Batch>,
        val: Option<&DataLoader<M::Batch>>,
        run: &mut Run,
        signals: &StopOnSignal,
    ) -> Result<(u64, Duration)> {
        module.on_fit_start()?;
        let req = hook(&mut self.callbacks, &run.state, |cb, ctx| cb.on_fit_start(ctx))?;
        self.apply(req, module, run, StopVote::AnyRank)?;

        let sanity = if self.fast_dev_batches().is_some() { 0 } else { self.config.num_sanity_val_steps };
        if let (Some(val), true) = (val, sanity > 0) {
            let limit = sanity.min(self.config.limit_val_batches.resolve(val.len()));
            self.evaluate(module, val, Stage::Validate, limit, &run.state.progress)?;
        }

        let first_step_global = run.state.progress.global_step;
        let loop_start = Instant::now();
        while run.state.stop_reason.is_none() {
            let p = &run.state.progress;
            if let Some(reason) = limit_reached(p, run.state.max_epochs, run.state.max_steps) {
                run.state.stop_reason = Some(reason);
                break;
            }
            if run.state.epoch_len == 0 {
                run.state.stop_reason = Some("no training batches".into());
                break;
            }
            self.train_epoch(module, train, val, run, signals)?;
        }
        let steps = run.state.progress.global_step - first_step_global;
        Ok((steps, loop_start.elapsed()))
    }
}

pub(super) fn limit_reached(
    p: &Progress,
    max_epochs: Option<usize>,
    max_steps: Option<u64>,
) -> Option<String> {
    if let Some(s) = max_steps {
        if p.global_step >= s {
            return Some(format!("max_steps={s} reached"));
        }
    }
    if let Some(e) = max_epochs {
        if p.epoch >= e {
            return Some(format!("max_epochs={e} reached"));
        }
    }
    None
}
