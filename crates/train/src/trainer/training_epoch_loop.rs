//! One training epoch: steps, accumulation, clipping, schedulers, step logging and the
//! validation runs due within it (Lightning's `training_epoch_loop.py`).
use super::fit_loop::limit_reached;
use super::{hook, log_row, Run, RunState, StopVote, Trainer};
use crate::config::BatchLimit;
use crate::data::{mix, Batch, DataLoader};
use crate::error::{Error, Result};
use crate::metrics::{EpochAccumulator, Metrics, Record, Stage};
use crate::module::{StepContext, VoltModule};
use crate::schedule::Interval;
use crate::signals::StopOnSignal;
use crate::strategy::ReduceOp;
use std::time::Instant;
use tch::Tensor;

impl Trainer {
    pub(super) fn train_epoch<M: VoltModule>(
        &mut self,
        module: &mut M,
        train: &DataLoader<M::Batch>,
        val: Option<&DataLoader<M::Batch>>,
        run: &mut Run,
        signals: &StopOnSignal,
    ) -> Result<()> {
        let epoch = run.state.progress.epoch;
        let epoch_len = run.state.epoch_len;
        let accumulate = self.config.accumulate_grad_batches;
        let device = self.fabric.device();
        // Lightning's val_check_interval: every that many training batches (not optimizer
        // steps), counted within the epoch, or across epochs when check_val_every_n_epoch
        // is "none". fast_dev_run validates once, at the end (Lightning's setting).
        let (val_every, every_n_epochs) = match self.config.val_check_interval {
            _ if run.state.fast_dev_run => (epoch_len.max(1), Some(1)),
            BatchLimit::Count(n) => (n.max(1), self.config.check_val_every_n_epoch),
            BatchLimit::Fraction(f) => {
                ((((epoch_len as f64) * f) as usize).max(1), self.config.check_val_every_n_epoch)
            }
        };
        let has_validation = run.state.has_validation;
        let validation_due = |batches_done: usize| {
            has_validation
                && match every_n_epochs {
                    Some(n) => (epoch + 1) % n.max(1) == 0 && batches_done % val_every == 0,
                    None => (epoch * epoch_len + batches_done) % val_every == 0,
                }
        };

        module.on_train_epoch_start(epoch)?;
        let req = hook(&mut self.callbacks, &run.state, |cb, ctx| cb.on_train_epoch_start(ctx))?;
        self.apply(req, module, run, StopVote::AnyRank)?;

        let mut epoch_acc = EpochAccumulator::default();
        let mut pending_step_records: Vec<Record> = Vec::new();
        let skip = run.state.progress.batch_in_epoch;
        let mut batches = train.epoch(epoch, skip);
        let mut ctx = StepContext::new(Stage::Train, device);
        let mut batch_idx = skip;
        let mut window_loss = 0.0;
        while batch_idx < epoch_len {
            let Some(batch) = batches.next() else { break };
            let batch = batch?.to_device(device);
            if let Some(seed) = run.seed {
                // Reseeding per batch makes dropout & co. independent of where a run resumed.
                tch::manual_seed(mix(mix(seed, epoch as u64), batch_idx as u64) as i64);
            }
            ctx.epoch = epoch;
            ctx.global_step = run.state.progress.global_step;
            ctx.batch_idx = batch_idx;
            ctx.batch_size = batch.batch_size();
            let loss = self.fabric.autocast(|| module.training_step(&batch, &mut ctx))?;
            let loss_value = loss.f_double_value(&[])?;
            if !loss_value.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value: loss_value,
                    epoch,
                    step: run.state.progress.global_step,
                    batch: batch_idx,
                });
            }
            let window_end = ((batch_idx / accumulate) + 1) * accumulate;
            let is_update = batch_idx + 1 == window_end || batch_idx + 1 == epoch_len;
            // The last window of an epoch may be short: scale by its true size.
            let window = window_end.min(epoch_len) - (batch_idx / accumulate) * accumulate;
            let scaled = if window > 1 { loss / window as f64 } else { loss };
            if is_update {
                if run.pending_stop.is_some() {
                    self.fabric.request_stop();
                }
                self.fabric.backward(&scaled)?;
            } else {
                self.fabric.no_backward_sync(|f| f.backward(&scaled))?;
            }
            window_loss += loss_value / window as f64;
            for r in ctx.records.drain(..) {
                if r.on_epoch {
                    epoch_acc.add(&r);
                }
                if r.on_step {
                    pending_step_records.push(r);
                }
            }
            batch_idx += 1;
            if is_update {
                run.state.progress.batch_in_epoch = batch_idx;
                let loss = std::mem::take(&mut window_loss);
                self.optimizer_step(module, run, &mut pending_step_records, loss)?;
            }
            // The end of the epoch validates after the loop, before the epoch's metrics.
            if batch_idx < epoch_len && validation_due(batch_idx) {
                if let Some(val) = val {
                    self.validation_run(module, val, run)?;
                }
            }
            if !is_update {
                continue;
            }
            if signals.requested() {
                self.ask_to_stop(run, "interrupted by a signal".into());
            }
            if self.fabric.stop_agreed() {
                let reason = run.pending_stop.take().unwrap_or_else(|| "another rank asked to stop".into());
                run.state.stop_reason.get_or_insert(reason);
            }
            if let Some(reason) = limit_reached(&run.state.progress, None, run.state.max_steps) {
                run.state.stop_reason.get_or_insert(reason);
            }
            if run.state.stop_reason.is_some() {
                return Ok(());
            }
        }
        drop(batches);

        // End of the epoch: validation, epoch metrics, epoch schedulers, hooks.
        if batch_idx == epoch_len && validation_due(batch_idx) {
            if let Some(val) = val {
                self.validation_run(module, val, run)?;
            }
        }
        let epoch_metrics = self.reduce_epoch(epoch_acc, &mut run.state)?;
        if !epoch_metrics.is_empty() {
            log_row(
                &mut run.loggers,
                &epoch_metrics,
                epoch,
                run.state.progress.global_step.saturating_sub(1),
            )?;
        }
        run.step_scheduler(Interval::Epoch, epoch as u64 + 1)?;
        module.on_train_epoch_end(epoch)?;
        let req = hook(&mut self.callbacks, &run.state, |cb, ctx| cb.on_train_epoch_end(ctx))?;
        self.apply(req, module, run, StopVote::RankZero)?;
        run.state.lr = run.optimizer.lr();
        for l in &mut run.loggers {
            l.flush()?;
        }
        run.state.progress.epoch += 1;
        run.state.progress.batch_in_epoch = 0;
        if signals.requested() {
            self.ask_to_stop(run, "interrupted by a signal".into());
        }
        Ok(())
    }

    /// After the last batch of an accumulation window: clip, step, schedule, log the
    /// window's step metrics, and call `on_train_batch_end` with the window's loss.
    fn optimizer_step<M: VoltModule>(
        &mut self,
        module: &mut M,
        run: &mut Run,
        pending_step_records: &mut Vec<Record>,
        window_loss: f64,
    ) -> Result<()> {
        if let Some(max) = self.config.gradient_clip_val.filter(|v| *v > 0.0) {
            self.fabric.clip_gradients(&run.optimizer, max, self.config.gradient_clip_algorithm)?;
        }
        let lr_used = run.optimizer.lr();
        run.optimizer.step()?;
        run.optimizer.zero_grad();
        run.state.progress.global_step += 1;
        run.first_step_at.get_or_insert_with(Instant::now);
        let global_step = run.state.progress.global_step;
        run.step_scheduler(Interval::Step, global_step)?;
        run.state.lr = lr_used;

        // Step-level metrics: the last value logged in the window.
        let mut step_metrics = Metrics::new();
        for r in pending_step_records.drain(..) {
            let name = r.step_name();
            if r.prog_bar {
                run.state.bar_metrics.insert(name.clone(), r.value);
            }
            step_metrics.insert(name, r.value);
        }
        run.state.metrics.extend(step_metrics.iter().map(|(k, v)| (k.clone(), *v)));
        if global_step % self.config.log_every_n_steps == 0 && !step_metrics.is_empty() {
            log_row(&mut run.loggers, &step_metrics, run.state.progress.epoch, global_step - 1)?;
        }
        let req = hook(&mut self.callbacks, &run.state, |cb, ctx| cb.on_train_batch_end(ctx, window_loss))?;
        self.apply(req, module, run, StopVote::AnyRank)?;
        run.state.lr = run.optimizer.lr();
        Ok(())
    }

    /// Means of the epoch's `on_epoch` values, reduced across ranks where asked.
    pub(super) fn reduce_epoch(&self, mut acc: EpochAccumulator, state: &mut RunState) -> Result<Metrics> {
        let mut out = Metrics::new();
        for (name, sum, weight, bar, sync) in acc.take() {
            let (sum, weight) = if sync && self.fabric.world_size() > 1 {
                let t = Tensor::from_slice(&[sum, weight]);
                let r = self.fabric.all_reduce(&t, ReduceOp::Sum)?;
                (r.double_value(&[0]), r.double_value(&[1]))
            } else {
                (sum, weight)
            };
            let mean = sum / weight.max(f64::MIN_POSITIVE);
            if bar {
                state.bar_metrics.insert(name.clone(), mean);
            }
            state.metrics.insert(name.clone(), mean);
            out.insert(name, mean);
        }
        Ok(out)
    }
}
