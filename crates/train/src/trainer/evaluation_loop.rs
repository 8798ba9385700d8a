//! Validation and test runs: inside `fit` and on their own (Lightning's
//! `evaluation_loop.py`).
use super::{hook, log_row, Run, RunState, StopVote, Trainer};
use crate::checkpoint::{self, Checkpoint, CkptPath};
use crate::data::{Batch, DataLoader, DataModule};
use crate::error::{Error, Result};
use crate::metrics::{EpochAccumulator, Metrics, Stage};
use crate::module::{StepContext, VoltModule};
use crate::progress::Progress;
use std::path::PathBuf;

impl Trainer {
    /// One validation run inside `fit`: metrics, logging, hooks.
    pub(super) fn validation_run<M: VoltModule>(
        &mut self,
        module: &mut M,
        val: &DataLoader<M::Batch>,
        run: &mut Run,
    ) -> Result<()> {
        let limit = self
            .fast_dev_batches()
            .unwrap_or(usize::MAX)
            .min(self.config.limit_val_batches.resolve(val.len()));
        let acc = self.evaluate(module, val, Stage::Validate, limit, &run.state.progress)?;
        run.state.validation_has_run = true;
        let metrics = self.reduce_epoch(acc, &mut run.state)?;
        if !metrics.is_empty() {
            log_row(
                &mut run.loggers,
                &metrics,
                run.state.progress.epoch,
                run.state.progress.global_step.saturating_sub(1),
            )?;
        }
        module.on_validation_epoch_end(&metrics)?;
        let req = hook(&mut self.callbacks, &run.state, |cb, ctx| cb.on_validation_end(ctx))?;
        self.apply(req, module, run, StopVote::RankZero)
    }

    /// Runs `*_step` over up to `limit` batches without gradients; returns the accumulated means.
    pub(super) fn evaluate<M: VoltModule>(
        &self,
        module: &mut M,
        loader: &DataLoader<M::Batch>,
        stage: Stage,
        limit: usize,
        progress: &Progress,
    ) -> Result<EpochAccumulator> {
        let device = self.fabric.device();
        let mut acc = EpochAccumulator::default();
        let mut ctx = StepContext::new(stage, device);
        ctx.epoch = progress.epoch;
        ctx.global_step = progress.global_step;
        tch::no_grad(|| -> Result<()> {
            for (i, batch) in loader.epoch(0, 0).take(limit).enumerate() {
                let batch = batch?.to_device(device);
                ctx.batch_idx = i;
                ctx.batch_size = batch.batch_size();
                match stage {
                    Stage::Test => self.fabric.autocast(|| module.test_step(&batch, &mut ctx))?,
                    _ => self.fabric.autocast(|| module.validation_step(&batch, &mut ctx))?,
                }
                for r in ctx.records.drain(..) {
                    if r.on_epoch {
                        acc.add(&r);
                    }
                }
            }
            Ok(())
        })?;
        Ok(acc)
    }

    /// Loads the model from `ckpt_path` (if given), moves it to the device, returns the path.
    pub(super) fn prepare_eval<M: VoltModule>(
        &mut self,
        module: &mut M,
        ckpt_path: Option<CkptPath>,
    ) -> Result<Option<PathBuf>> {
        let path = match &ckpt_path {
            Some(c) => Some(self.resolve_ckpt_path(c)?.ok_or_else(|| {
                Error::checkpoint(self.experiment_dir(), "ckpt_path=\"last\": no checkpoint found")
            })?),
            None => None,
        };
        if let Some(p) = &path {
            let ckpt = Checkpoint::load(p)?;
            module.on_load_checkpoint(&ckpt.state.module)?;
            checkpoint::restore_model_of(module.var_store(), &ckpt, p, module.saved_variables())?;
        }
        self.fabric.setup_module(module.var_store())?;
        Ok(path)
    }

    /// Runs the validation loop once; returns the epoch-level metrics.
    pub fn validate<M, D>(&mut self, module: &mut M, data: &D, ckpt_path: Option<CkptPath>) -> Result<Metrics>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let loader =
            data.val_dataloader().ok_or_else(|| Error::Data("validate needs a val_dataloader".into()))?;
        self.eval_stage(module, loader, Stage::Validate, self.config.limit_val_batches, ckpt_path)
    }

    /// Runs the test loop once; returns the epoch-level metrics.
    pub fn test<M, D>(&mut self, module: &mut M, data: &D, ckpt_path: Option<CkptPath>) -> Result<Metrics>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let loader =
            data.test_dataloader().ok_or_else(|| Error::Data("test needs a test_dataloader".into()))?;
        self.eval_stage(module, loader, Stage::Test, self.config.limit_test_batches, ckpt_path)
    }

    pub(super) fn eval_stage<M: VoltModule>(
        &mut self,
        module: &mut M,
        loader: DataLoader<M::Batch>,
        stage: Stage,
        limit: crate::config::BatchLimit,
        ckpt_path: Option<CkptPath>,
    ) -> Result<Metrics> {
        self.prepare_eval(module, ckpt_path)?;
        let loader = self.fabric.setup_dataloader(loader);
        let limit = self.fast_dev_batches().unwrap_or(usize::MAX).min(limit.resolve(loader.len()));
        let acc = self.evaluate(module, &loader, stage, limit, &Progress::default())?;
        let mut scratch = RunState {
            progress: Progress::default(),
            epoch_len: 0,
            metrics: Metrics::new(),
            bar_metrics: Metrics::new(),
            log_dir: None,
            has_validation: false,
            lr: 0.0,
            optimizer_name: "",
            is_global_zero: self.fabric.is_global_zero(),
            max_epochs: None,
            max_steps: None,
            stop_reason: None,
            fast_dev_run: false,
            validation_has_run: false,
        };
        self.reduce_epoch(acc, &mut scratch)
    }
}
