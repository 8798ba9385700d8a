//! The Trainer: Lightning's fit / validate / test / predict loops on top of [`Fabric`],
//! one file per loop as in Lightning.
//!
//! A batch's path, top to bottom: [`Trainer::fit`] (here) resolves and restores a
//! checkpoint (`checkpointing.rs`), sets up the model, optimizer, loggers and callbacks;
//! `fit_loop.rs` runs the sanity check and the epochs; `training_epoch_loop.rs` runs
//! `training_step` → backward → clip → optimizer step → scheduler → logging → callbacks →
//! validation when due (`evaluation_loop.rs`), until a limit, a callback or a signal ends
//! the run; `finish` (here) writes `last.safetensors` and flushes the loggers.
mod checkpointing;
mod evaluation_loop;
mod fit_loop;
mod prediction_loop;
mod training_epoch_loop;

use crate::callbacks::{Callback, CallbackContext, FitPlan, ModelCheckpoint, ProgressBar, Requests};
use crate::checkpoint::{self, Checkpoint, CheckpointWriter, CkptPath, LAST_NAME};
use crate::config::{BatchLimit, TrainerConfig};
use crate::data::DataModule;
use crate::error::{Error, Result};
use crate::fabric::Fabric;
use crate::job_run::JobRun;
use crate::loggers::{next_version_dir, save_hparams, Logger};
use crate::metrics::Metrics;
use crate::module::VoltModule;
use crate::optim::{Optimizer, OptimizerConfig};
use crate::progress::Progress;
use crate::schedule::{Interval, LrScheduler};
use crate::signals::StopOnSignal;
use crate::summary::ModelSummary;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    /// Whether a validation run (not the sanity check) has happened in this `fit`.
    validation_has_run: bool,
    lr: f64,
    optimizer_name: &'static str,
    is_global_zero: bool,
    max_epochs: Option<usize>,
    max_steps: Option<u64>,
    stop_reason: Option<String>,
    fast_dev_run: bool,
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

    /// Trains `module` on `data`, optionally resuming from `ckpt_path`.
    pub fn fit<M, D>(&mut self, module: &mut M, data: &D, ckpt_path: Option<CkptPath>) -> Result<FitOutcome>
    where
        M: VoltModule,
        D: DataModule<Batch = M::Batch>,
    {
        let fast_dev = self.fast_dev_batches();
        // Before the loaders are made: the seed also orders their shuffles.
        if let Some(seed) = self.config.seed {
            Fabric::seed_everything(seed);
        }
        let train_loader =
            data.train_dataloader().ok_or_else(|| Error::Data("fit needs a train_dataloader".into()))?;
        let train_loader = self.fabric.setup_dataloader(train_loader);
        let val_loader = data.val_dataloader().map(|l| self.fabric.setup_dataloader(l));

        // Everything that can fail on bad input happens before anything is written.
        let job = (ckpt_path.is_none() && self.config.version.is_none()).then(JobRun::from_env).flatten();
        // The folder an earlier attempt of this job made, if any.
        let job_dir = job.as_ref().and_then(|j| j.version_dir(&self.experiment_dir()));
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
            // Under `volt job`, each attempt resumes from the job's own `last`.
            None => job_dir.as_deref().and_then(JobRun::last_in),
        };
        if let (Some(j), Some(path)) = (&job, &resume_from) {
            tracing::info!("job attempt {}: resuming from {}", j.attempt, path.display());
        }
        let restored = match &resume_from {
            Some(path) => Some(Checkpoint::load(path)?),
            None => None,
        };

        self.fabric.setup_module(module.var_store())?;
        let opt_config = self.optimizer_config.clone().unwrap_or_else(|| module.configure_optimizers());
        opt_config.optimizer.validate()?;
        if let Some(s) = &opt_config.lr_scheduler {
            s.validate()?;
        }
        let mut optimizer = Optimizer::new(opt_config.optimizer.clone(), module.var_store());
        self.fabric.prepare_optimizer(&mut optimizer);
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
                _ => match (self.config.version, job_dir) {
                    (Some(v), _) => self.experiment_dir().join(format!("version_{v}")),
                    // A job's earlier attempt made its folder but wrote no checkpoint.
                    (None, Some(dir)) => dir,
                    (None, None) => next_version_dir(&self.experiment_dir()),
                },
            };
            if let Some(j) = job.as_ref().filter(|_| self.fabric.is_global_zero()) {
                j.mark(&dir)
                    .map_err(|e| Error::checkpoint(&dir, format!("cannot mark it as the job's: {e}")))?;
            }
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
        let epoch_len =
            fast_dev.unwrap_or(usize::MAX).min(self.config.limit_train_batches.resolve(train_loader.len()));
        let val_batches = val_loader.as_ref().map_or(0, |v| {
            fast_dev.unwrap_or(usize::MAX).min(self.config.limit_val_batches.resolve(v.len()))
        });
        if fast_dev.is_none() {
            self.config.validate_epoch(epoch_len, val_batches > 0)?;
        }
        let has_model_checkpoint = self.callbacks.iter().any(|c| c.name().starts_with("ModelCheckpoint"));
        if !self.config.enable_checkpointing && has_model_checkpoint {
            return Err(Error::Config(
                "trainer.enable_checkpointing is false but a ModelCheckpoint callback is configured; \
                 remove it or turn checkpointing on"
                    .into(),
            ));
        }
        if self.config.enable_checkpointing && fast_dev.is_none() && !has_model_checkpoint {
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
        // What the callbacks can check before anything is written.
        let plan = FitPlan {
            log_dir: log_dir.as_deref(),
            has_validation: val_batches > 0,
            fast_dev_run: fast_dev.is_some(),
            is_global_zero: self.fabric.is_global_zero(),
            validates_once_per_epoch: fast_dev.is_some()
                || (self.config.val_check_interval == BatchLimit::Fraction(1.0)
                    && self.config.check_val_every_n_epoch == Some(1)),
        };
        for cb in &mut self.callbacks {
            cb.setup(&plan)?;
        }

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
        if self.config.enable_model_summary && self.fabric.is_global_zero() {
            println!("{}", ModelSummary::of(module.var_store()));
        }

        let mut run = Run {
            state: RunState {
                progress,
                epoch_len,
                metrics: restored.as_ref().map(|c| c.state.metrics.clone()).unwrap_or_default(),
                bar_metrics: Metrics::new(),
                log_dir,
                has_validation: val_batches > 0,
                validation_has_run: false,
                lr: optimizer.lr(),
                optimizer_name: optimizer.spec().class_name(),
                is_global_zero: self.fabric.is_global_zero(),
                max_epochs: if fast_dev.is_some() { Some(1) } else { self.config.epoch_limit() },
                max_steps: self.config.max_steps,
                stop_reason: None,
                fast_dev_run: fast_dev.is_some(),
            },
            optimizer,
            scheduler,
            loggers,
            writer: CheckpointWriter::new(),
            seed: self.config.seed,
            pending_stop: None,
            first_step_at: None,
        };

        // Held until fit returns: a signal that comes while `last` is being written (a
        // scheduler's repeat, after the first stopped the loop) must not kill the write.
        let signals = StopOnSignal::install();
        let result = self.fit_loop(module, &train_loader, val_loader.as_ref(), &mut run, &signals);
        match result {
            Ok((steps, train_time)) => self.finish(module, run, steps, train_time),
            Err(e) => {
                module.on_exception(&e);
                let mut ignored = Requests::default();
                for cb in &mut self.callbacks {
                    cb.on_exception(&mut context(&run.state, &mut ignored), &e);
                }
                // Keep what was logged and what was saved before the failure; write no
                // checkpoint of the failed state.
                for l in &mut run.loggers {
                    let _ = l.flush();
                }
                let _ = run.writer.flush();
                Err(e.during_fit(&run.state.progress))
            }
        }
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
}

/// Calls one hook on every callback; collects what they ask for.
fn hook(
    callbacks: &mut [Box<dyn Callback>],
    st: &RunState,
    mut f: impl FnMut(&mut dyn Callback, &mut CallbackContext) -> Result<()>,
) -> Result<Requests> {
    let mut requests = Requests::default();
    for cb in callbacks.iter_mut() {
        let mut ctx = context(st, &mut requests);
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

/// What callbacks see of the run, collecting their requests into `requests`.
fn context<'a>(st: &'a RunState, requests: &'a mut Requests) -> CallbackContext<'a> {
    CallbackContext {
        progress: &st.progress,
        metrics: &st.metrics,
        progress_bar_metrics: &st.bar_metrics,
        lr: st.lr,
        optimizer_name: st.optimizer_name,
        log_dir: st.log_dir.as_deref(),
        is_global_zero: st.is_global_zero,
        has_validation: st.has_validation,
        validation_has_run: st.validation_has_run,
        fast_dev_run: st.fast_dev_run,
        num_training_batches: st.epoch_len,
        max_epochs: st.max_epochs,
        max_steps: st.max_steps,
        requests,
    }
}
