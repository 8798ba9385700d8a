//! The Trainer: Lightning's fit / validate / test / predict loops on top of [`Fabric`].
//!
//! A batch's path, top to bottom: [`Trainer::fit`] resolves and restores a checkpoint,
//! sets up the model, optimizer, loggers and callbacks, runs the sanity check, then
//! `train_epoch` runs `training_step` → backward → clip → optimizer step → scheduler →
//! logging → callbacks → validation when due, until a limit, a callback or a signal
//! ends the run; `finish` writes `last.safetensors` and flushes the loggers.
use crate::callbacks::{Callback, CallbackContext, ModelCheckpoint, ProgressBar, Requests};
use crate::checkpoint::{self, Checkpoint, CheckpointWriter, CkptPath, TrainingState, LAST_NAME};
use crate::config::TrainerConfig;
use crate::data::{mix, Batch, DataLoader, DataModule};
use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::loggers::{next_version_dir, save_hparams, Logger};
use crate::metrics::{EpochAccumulator, Metrics, Record, Stage};
use crate::module::{StepContext, VoltModule};
use crate::optim::{Optimizer, OptimizerConfig};
use crate::progress::Progress;
use crate::schedule::{Interval, LrScheduler};
use crate::signals::StopOnSignal;
use crate::strategy::ReduceOp;
use crate::summary::ModelSummary;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::Tensor;

/// How a `fit` ended.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOutcome {
    /// Where the loop stopped.
    pub progress: Progress,
    /// Why it stopped (limit reached, early stopping, signal).
    pub stop_reason: String,
    /// Latest value of every metric.
    pub metrics: Metrics,
    /// The run's `version_N` folder, when logging or checkpointing was on.
    pub log_dir: Option<PathBuf>,
    /// `last.safetensors`, when checkpointing was on.
    pub last_checkpoint: Option<PathBuf>,
    /// The best checkpoint recorded by a ModelCheckpoint with a monitor.
    pub best_checkpoint: Option<PathBuf>,
    /// Optimizer steps taken in this call.
    pub steps_this_run: u64,
    /// Wall time of the training loop in this call.
    pub train_time: Duration,
    /// When the first optimizer step of this call finished.
    pub first_step_at: Option<Instant>,
}

/// Runs the loops; configured by [`TrainerConfig`] plus callbacks and loggers.
pub struct Trainer {
    config: TrainerConfig,
    fabric: Fabric,
    callbacks: Vec<Box<dyn Callback>>,
    extra_loggers: Vec<Box<dyn Logger>>,
    optimizer_config: Option<OptimizerConfig>,
}

/// The mutable state of one `fit` call that callbacks get to see.
struct RunState {
    progress: Progress,
    epoch_len: usize,
    metrics: Metrics,
    bar_metrics: Metrics,
    log_dir: Option<PathBuf>,
    has_validation: bool,
    lr: f64,
    optimizer_name: &'static str,
    is_global_zero: bool,
    max_epochs: Option<usize>,
    max_steps: Option<u64>,
    stop_reason: Option<String>,
}

/// What one `fit` call owns besides the module.
struct Run {
    state: RunState,
    optimizer: Optimizer,
    scheduler: Option<LrScheduler>,
    loggers: Vec<Box<dyn Logger>>,
    writer: CheckpointWriter,
    seed: Option<u64>,
    /// A stop asked for by this rank and not yet agreed with the others (ddp only).
    pending_stop: Option<String>,
    /// When the first optimizer step of this call finished.
    first_step_at: Option<Instant>,
}

/// Who decides a stop that callbacks ask for in a hook.
#[derive(Clone, Copy, PartialEq)]
enum StopVote {
    /// Any rank may ask; ranks agree at the next gradient reduction (per-step hooks).
    AnyRank,
    /// Rank zero decides and tells the others now (validation and epoch ends, where
    /// EarlyStopping and ModelCheckpoint act).
    RankZero,
}

impl Run {
    /// Steps the scheduler when its interval is `interval` and `count` (steps or epochs
    /// done) is a multiple of its frequency; a monitored metric must have been logged.
    fn step_scheduler(&mut self, interval: Interval, count: u64) -> Result<()> {
        let Some(s) = self.scheduler.as_mut() else { return Ok(()) };
        let c = s.config();
        if c.interval != interval || count % c.frequency.max(1) != 0 {
            return Ok(());
        }
        let metric = match &c.monitor {
            Some(m) => Some(self.state.metrics.get(m).copied().ok_or_else(|| {
                Error::Config(format!(
                    "lr_scheduler.monitor = \"{m}\" was never logged; logged metrics: [{}]",
                    self.state.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?),
            None => None,
        };
        self.optimizer.set_lr(s.step(metric));
        Ok(())
    }
}

impl Trainer {
    /// A trainer for `config` (device chosen, nothing written yet).
    pub fn new(config: TrainerConfig) -> Result<Self> {
        config.validate()?;
        let fabric = Fabric::new(&crate::config::fabric_config(&config))?;
        Ok(Trainer {
            config,
            fabric,
            callbacks: Vec::new(),
            extra_loggers: Vec::new(),
            optimizer_config: None,
        })
    }

    /// Adds a callback (builder style).
    pub fn with_callback(mut self, callback: impl Callback + 'static) -> Self {
        self.callbacks.push(Box::new(callback));
        self
    }

    /// Uses `config` instead of what the module's `configure_optimizers` returns
    /// (the command line's `[optimizer]` and `[lr_scheduler]` sections).
    pub fn with_optimizer_config(mut self, config: OptimizerConfig) -> Self {
        self.optimizer_config = Some(config);
        self
    }

    /// Adds a logger of the caller's on top of the configured ones.
    pub fn with_logger(mut self, logger: impl Logger + 'static) -> Self {
        self.extra_loggers.push(Box::new(logger));
        self
    }

    /// The options.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The Fabric underneath.
    pub fn fabric(&self) -> &Fabric {
        &self.fabric
    }

    /// The callbacks, in the order they run.
    pub fn callbacks(&self) -> &[Box<dyn Callback>] {
        &self.callbacks
    }

    fn fast_dev_batches(&self) -> Option<usize> {
        self.config.fast_dev_run.batches()
    }

    fn experiment_dir(&self) -> PathBuf {
        self.config.default_root_dir.join(&self.config.name)
    }

    /// Finds the checkpoint `ckpt` names; `Ok(None)` for `last` when there is none yet.
    pub fn resolve_ckpt_path(&self, ckpt: &CkptPath) -> Result<Option<PathBuf>> {
        match ckpt {
            CkptPath::Path(p) => {
                if p.is_file() {
                    Ok(Some(p.clone()))
                } else {
                    Err(Error::checkpoint(p, "file not found"))
                }
            }
            CkptPath::Last => Ok(checkpoint::find_last(&self.experiment_dir())),
            CkptPath::Best => {
                if let Some(best) = self.callbacks.iter().find_map(|c| c.best_model_path()) {
                    return Ok(Some(best));
                }
                let experiment = self.experiment_dir();
                let last = checkpoint::find_last(&experiment).ok_or_else(|| {
                    Error::checkpoint(&experiment, "ckpt_path=\"best\": no checkpoint under this folder")
                })?;
                let best = Checkpoint::read_state(&last)?
                    .callbacks
                    .iter()
                    .filter(|(name, _)| name.starts_with("ModelCheckpoint"))
                    .find_map(|(_, s)| s.get("best_model_path")?.as_str().map(PathBuf::from))
                    .ok_or_else(|| {
                        Error::checkpoint(
                            &last,
                            "ckpt_path=\"best\": no ModelCheckpoint recorded a best model",
                        )
                    })?;
                if best.is_file() {
                    Ok(Some(best))
                } else {
                    Err(Error::checkpoint(best, "the recorded best checkpoint is missing"))
                }
            }
        }
    }

    /// Trains `module` on `data`, optionally resuming from `ckpt_path`.
    pub fn fit<M, D>(&mut self, module: &mut M, data: &D, ckpt_path: Option<CkptPath>) -> Result<FitOutcome>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let fast_dev = self.fast_dev_batches();
        let train_loader =
            data.train_dataloader().ok_or_else(|| Error::Data("fit needs a train_dataloader".into()))?;
        let train_loader = self.fabric.setup_dataloader(train_loader);
        let val_loader = data.val_dataloader().map(|l| self.fabric.setup_dataloader(l));

        // Everything that can fail on bad input happens before anything is written.
        let resume_from = match &ckpt_path {
            Some(c) => {
                let found = self.resolve_ckpt_path(c)?;
                if found.is_none() {
                    tracing::warn!(
                        "ckpt_path=\"last\" found no checkpoint under {}; starting from scratch",
                        self.experiment_dir().display()
                    );
                }
                found
            }
            None => None,
        };
        let restored = match &resume_from {
            Some(path) => Some(Checkpoint::load(path)?),
            None => None,
        };

        if let Some(seed) = self.config.seed {
            Fabric::seed_everything(seed);
        }
        self.fabric.setup_module(module.var_store())?;
        let opt_config = self.optimizer_config.clone().unwrap_or_else(|| module.configure_optimizers());
        let mut optimizer = Optimizer::new(opt_config.optimizer.clone(), module.var_store());
        let mut scheduler =
            opt_config.lr_scheduler.clone().map(|c| LrScheduler::new(c, opt_config.optimizer.lr()));
        if let Some(s) = &scheduler {
            optimizer.set_lr(s.lr());
        }

        let mut progress = Progress::default();
        if let (Some(ckpt), Some(path)) = (&restored, &resume_from) {
            progress = self.restore(module, &mut optimizer, &mut scheduler, ckpt, path)?;
        }

        // Files: the version folder, loggers, hparams.
        let writes_files =
            fast_dev.is_none() && (self.config.enable_checkpointing || !self.config.loggers.is_empty());
        let log_dir = if writes_files {
            let dir = match resume_from.as_deref().and_then(checkpoint::version_dir_of) {
                Some(dir) if dir.parent() == Some(self.experiment_dir().as_path()) => dir,
                _ => match self.config.version {
                    Some(v) => self.experiment_dir().join(format!("version_{v}")),
                    None => next_version_dir(&self.experiment_dir()),
                },
            };
            Some(dir)
        } else {
            None
        };
        // Rank zero picks the version folder; the others use the same one.
        let log_dir = match log_dir {
            Some(dir) if self.fabric.world_size() > 1 => {
                let agreed = self.fabric.broadcast_bytes(dir.to_string_lossy().as_bytes(), 0)?;
                Some(PathBuf::from(String::from_utf8_lossy(&agreed).into_owned()))
            }
            other => other,
        };
        let mut loggers: Vec<Box<dyn Logger>> = std::mem::take(&mut self.extra_loggers);
        if let (Some(dir), true) = (&log_dir, self.fabric.is_global_zero()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            if fast_dev.is_none() {
                for kind in &self.config.loggers {
                    loggers.push(crate::loggers::create(*kind, dir)?);
                }
            }
            if !self.config.loggers.is_empty() {
                save_hparams(dir, &module.hparams())?;
            }
        }
        if self.config.enable_checkpointing
            && fast_dev.is_none()
            && !self.callbacks.iter().any(|c| c.name().starts_with("ModelCheckpoint"))
        {
            self.callbacks.push(Box::new(ModelCheckpoint::default()));
        }
        if self.config.enable_progress_bar && !self.callbacks.iter().any(|c| c.name() == "ProgressBar") {
            self.callbacks.push(Box::new(ProgressBar::default()));
        }
        if let Some(ckpt) = &restored {
            for cb in &mut self.callbacks {
                if let Some(state) = ckpt.state.callbacks.get(&cb.name()) {
                    cb.load_state_dict(state)?;
                }
            }
        }
        if self.config.enable_model_summary && self.fabric.is_global_zero() {
            println!("{}", ModelSummary::of(module.var_store()));
        }

        let epoch_len =
            fast_dev.unwrap_or(usize::MAX).min(self.config.limit_train_batches.resolve(train_loader.len()));
        let mut run = Run {
            state: RunState {
                progress,
                epoch_len,
                metrics: restored.as_ref().map(|c| c.state.metrics.clone()).unwrap_or_default(),
                bar_metrics: Metrics::new(),
                log_dir,
                has_validation: val_loader.is_some(),
                lr: optimizer.lr(),
                optimizer_name: optimizer.spec().class_name(),
                is_global_zero: self.fabric.is_global_zero(),
                max_epochs: if fast_dev.is_some() { Some(1) } else { self.config.epoch_limit() },
                max_steps: self.config.max_steps,
                stop_reason: None,
            },
            optimizer,
            scheduler,
            loggers,
            writer: CheckpointWriter::new(),
            seed: self.config.seed,
            pending_stop: None,
            first_step_at: None,
        };

        let signals = StopOnSignal::install();
        let result = self.fit_loop(module, &train_loader, val_loader.as_ref(), &mut run, &signals);
        drop(signals);
        match result {
            Ok((steps, train_time)) => self.finish(module, run, steps, train_time),
            Err(e) => {
                // Keep what was logged and what was saved before the failure; write no
                // checkpoint of the failed state.
                for l in &mut run.loggers {
                    let _ = l.flush();
                }
                let _ = run.writer.flush();
                Err(e)
            }
        }
    }

    fn restore<M: VoltModule>(
        &mut self,
        module: &mut M,
        optimizer: &mut Optimizer,
        scheduler: &mut Option<LrScheduler>,
        ckpt: &Checkpoint,
        path: &Path,
    ) -> Result<Progress> {
        checkpoint::restore_model(module.var_store(), ckpt, path)?;
        if let Some(scalars) = &ckpt.state.optimizer {
            let tensors = ckpt.section(checkpoint::OPTIMIZER_PREFIX);
            optimizer.load_state(scalars, &tensors).map_err(|problems| Error::CheckpointMismatch {
                path: path.to_owned(),
                details: problems.join("\n"),
            })?;
        }
        if let (Some(s), Some(state)) = (scheduler.as_mut(), &ckpt.state.scheduler) {
            s.load_state(state.clone());
        }
        module.on_load_checkpoint(&ckpt.state.module)?;
        Ok(ckpt.state.progress.clone())
    }

    /// Returns (steps taken, training wall time, time to first step).
    fn fit_loop<M: VoltModule>(
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

    #[allow(clippy::too_many_arguments)]
    fn train_epoch<M: VoltModule>(
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
        let val_due_this_epoch = val.is_some() && (epoch + 1) % self.config.check_val_every_n_epoch == 0;
        let val_every = match self.config.val_check_interval {
            crate::config::BatchLimit::Count(n) => n.max(1),
            crate::config::BatchLimit::Fraction(f) => (((epoch_len as f64) * f) as usize).max(1),
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
            let loss = module.training_step(&batch, &mut ctx)?;
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
            if !is_update {
                continue;
            }

            if let Some(max) = self.config.gradient_clip_val {
                self.fabric.clip_gradients(&run.optimizer, max, self.config.gradient_clip_algorithm)?;
            }
            let lr_used = run.optimizer.lr();
            run.optimizer.step()?;
            run.optimizer.zero_grad();
            run.state.progress.global_step += 1;
            run.first_step_at.get_or_insert_with(Instant::now);
            run.state.progress.batch_in_epoch = batch_idx;
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
                log_row(&mut run.loggers, &step_metrics, epoch, global_step - 1)?;
            }
            let loss_for_callbacks = std::mem::take(&mut window_loss);
            let req = hook(&mut self.callbacks, &run.state, |cb, ctx| {
                cb.on_train_batch_end(ctx, loss_for_callbacks)
            })?;
            self.apply(req, module, run, StopVote::AnyRank)?;
            run.state.lr = run.optimizer.lr();

            let end_of_epoch = batch_idx == epoch_len;
            if val_due_this_epoch && !end_of_epoch && batch_idx % val_every == 0 {
                if let Some(val) = val {
                    self.validation_run(module, val, run)?;
                }
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
        if val_due_this_epoch && (batch_idx % val_every == 0 || val_every >= epoch_len) {
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

    /// Means of the epoch's `on_epoch` values, reduced across ranks where asked.
    fn reduce_epoch(&self, mut acc: EpochAccumulator, state: &mut RunState) -> Result<Metrics> {
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

    /// One validation run inside `fit`: metrics, logging, hooks.
    fn validation_run<M: VoltModule>(
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
    fn evaluate<M: VoltModule>(
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
                    Stage::Test => module.test_step(&batch, &mut ctx)?,
                    _ => module.validation_step(&batch, &mut ctx)?,
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

    /// Stops now on one rank; under ddp, asks the others and stops once they agree.
    fn ask_to_stop(&self, run: &mut Run, reason: String) {
        if self.fabric.world_size() == 1 {
            run.state.stop_reason.get_or_insert(reason);
        } else {
            run.pending_stop.get_or_insert(reason);
        }
    }

    /// Carries out what callbacks asked for: checkpoint saves and removals, logs, stop.
    fn apply<M: VoltModule>(
        &mut self,
        req: Requests,
        module: &M,
        run: &mut Run,
        vote: StopVote,
    ) -> Result<()> {
        if !req.logs.is_empty() {
            run.state.metrics.extend(req.logs.iter().map(|(k, v)| (k.clone(), *v)));
            log_row(
                &mut run.loggers,
                &req.logs,
                run.state.progress.epoch,
                run.state.progress.global_step.saturating_sub(1),
            )?;
        }
        if self.fabric.is_global_zero() {
            if !req.saves.is_empty() {
                run.writer.save(&self.checkpoint(module, run), &req.saves)?;
            }
            for path in req.removals.iter().filter(|p| !req.saves.contains(p)) {
                run.writer.remove(path)?;
            }
        }
        match (vote, req.stop) {
            (StopVote::RankZero, stop) if self.fabric.world_size() > 1 => {
                let mine =
                    if self.fabric.is_global_zero() { stop.unwrap_or_default() } else { String::new() };
                let decided = self.fabric.broadcast_bytes(mine.as_bytes(), 0)?;
                if !decided.is_empty() {
                    run.state.stop_reason.get_or_insert(String::from_utf8_lossy(&decided).into_owned());
                }
            }
            (_, Some(reason)) => self.ask_to_stop(run, reason),
            (_, None) => {}
        }
        Ok(())
    }

    /// The current state as a checkpoint.
    fn checkpoint<M: VoltModule>(&self, module: &M, run: &Run) -> Checkpoint {
        let mut progress = run.state.progress.clone();
        if progress.batch_in_epoch >= run.state.epoch_len {
            progress.epoch += 1;
            progress.batch_in_epoch = 0;
        }
        let mut tensors = checkpoint::model_tensors(module.var_store());
        tensors.extend(
            run.optimizer
                .state_tensors()
                .into_iter()
                .map(|(n, t)| (format!("{}{n}", checkpoint::OPTIMIZER_PREFIX), t)),
        );
        Checkpoint {
            tensors,
            state: TrainingState {
                volt_version: env!("CARGO_PKG_VERSION").to_owned(),
                format: checkpoint::FORMAT_VERSION,
                progress,
                optimizer: Some(run.optimizer.scalars()),
                scheduler: run.scheduler.as_ref().map(|s| s.state().clone()),
                callbacks: self.callbacks.iter().map(|c| (c.name(), c.state_dict())).collect(),
                seed: run.seed,
                hparams: module.hparams(),
                module: module.on_save_checkpoint(),
                metrics: run.state.metrics.clone(),
            },
        }
    }

    fn finish<M: VoltModule>(
        &mut self,
        module: &mut M,
        mut run: Run,
        steps: u64,
        train_time: Duration,
    ) -> Result<FitOutcome> {
        let req = hook(&mut self.callbacks, &run.state, |cb, ctx| cb.on_fit_end(ctx))?;
        self.apply(req, module, &mut run, StopVote::AnyRank)?;
        module.on_fit_end()?;
        let last = match (&run.state.log_dir, self.config.enable_checkpointing) {
            (Some(dir), true) => {
                let path = dir.join("checkpoints").join(LAST_NAME);
                if self.fabric.is_global_zero() {
                    run.writer.save(&self.checkpoint(module, &run), std::slice::from_ref(&path))?;
                }
                Some(path)
            }
            _ => None,
        };
        run.writer.flush()?;
        for l in &mut run.loggers {
            l.flush()?;
        }
        let mut best_checkpoint = self.callbacks.iter().find_map(|c| c.best_model_path());
        if self.fabric.world_size() > 1 {
            // Rank zero's ModelCheckpoint decided; every rank reports its choice, after
            // its files are on disk.
            let path = best_checkpoint.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let agreed = self.fabric.broadcast_bytes(path.as_bytes(), 0)?;
            best_checkpoint =
                (!agreed.is_empty()).then(|| PathBuf::from(String::from_utf8_lossy(&agreed).into_owned()));
            self.fabric.barrier()?;
        }
        Ok(FitOutcome {
            progress: run.state.progress,
            stop_reason: run.state.stop_reason.unwrap_or_default(),
            metrics: run.state.metrics,
            log_dir: run.state.log_dir,
            last_checkpoint: last,
            best_checkpoint,
            first_step_at: run.first_step_at,
            steps_this_run: steps,
            train_time,
        })
    }

    /// Loads the model from `ckpt_path` (if given), moves it to the device, returns the path.
    fn prepare_eval<M: VoltModule>(
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
            checkpoint::restore_model(module.var_store(), &ckpt, p)?;
            module.on_load_checkpoint(&ckpt.state.module)?;
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

    fn eval_stage<M: VoltModule>(
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
        };
        self.reduce_epoch(acc, &mut scratch)
    }

    /// Runs `predict_step` over the predict loader; returns one prediction per batch.
    pub fn predict<M, D>(
        &mut self,
        module: &mut M,
        data: &D,
        ckpt_path: Option<CkptPath>,
    ) -> Result<Vec<M::Prediction>>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let loader = data
            .predict_dataloader()
            .ok_or_else(|| Error::Data("predict needs a predict_dataloader".into()))?;
        self.prepare_eval(module, ckpt_path)?;
        let loader = self.fabric.setup_dataloader(loader);
        let limit = self
            .fast_dev_batches()
            .unwrap_or(usize::MAX)
            .min(self.config.limit_predict_batches.resolve(loader.len()));
        let device = self.fabric.device();
        let mut ctx = StepContext::new(Stage::Predict, device);
        tch::no_grad(|| {
            loader
                .epoch(0, 0)
                .take(limit)
                .enumerate()
                .map(|(i, batch)| {
                    let batch = batch?.to_device(device);
                    ctx.batch_idx = i;
                    ctx.batch_size = batch.batch_size();
                    module.predict_step(&batch, &mut ctx)
                })
                .collect()
        })
    }
}

fn limit_reached(p: &Progress, max_epochs: Option<usize>, max_steps: Option<u64>) -> Option<String> {
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

/// Calls one hook on every callback; collects what they ask for.
fn hook(
    callbacks: &mut [Box<dyn Callback>],
    st: &RunState,
    mut f: impl FnMut(&mut dyn Callback, &mut CallbackContext) -> Result<()>,
) -> Result<Requests> {
    let mut requests = Requests::default();
    for cb in callbacks.iter_mut() {
        let mut ctx = CallbackContext {
            progress: &st.progress,
            metrics: &st.metrics,
            progress_bar_metrics: &st.bar_metrics,
            lr: st.lr,
            optimizer_name: st.optimizer_name,
            log_dir: st.log_dir.as_deref(),
            is_global_zero: st.is_global_zero,
            has_validation: st.has_validation,
            num_training_batches: st.epoch_len,
            max_epochs: st.max_epochs,
            max_steps: st.max_steps,
            requests: &mut requests,
        };
        f(cb.as_mut(), &mut ctx)?;
    }
    Ok(requests)
}

/// One row to every logger, with Lightning's `epoch` column.
fn log_row(loggers: &mut [Box<dyn Logger>], metrics: &Metrics, epoch: usize, step: u64) -> Result<()> {
    if loggers.is_empty() {
        return Ok(());
    }
    let mut row = metrics.clone();
    row.insert("epoch".into(), epoch as f64);
    for l in loggers.iter_mut() {
        l.log_metrics(&row, step)?;
    }
    Ok(())
}
