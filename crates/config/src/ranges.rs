//! Every option's valid range, in one place. PyTorch checks an optimizer's numbers when
//! it is built and Lightning its Trainer's and callbacks' when they are made; volt checks
//! them all here, before anything is written, and names the key of what it refuses.
use crate::callbacks::{EarlyStopping, ModelCheckpoint};
use crate::loader::ConfigError;
use crate::optim::OptimizerSpec;
use crate::run::RunConfig;
use crate::schedule::{SchedulerConfig, SchedulerSpec};
use crate::trainer::{BatchLimit, TrainerConfig};

type Checked = Result<(), ConfigError>;

fn refuse(key: &str, value: impl std::fmt::Display, why: &str) -> Checked {
    Err(ConfigError::OutOfRange { key: key.to_owned(), value: value.to_string(), why: why.to_owned() })
}

/// `x >= 0` and finite (NaN fails every comparison, so it is refused too).
fn non_negative(key: &str, x: f64) -> Checked {
    if x >= 0.0 && x.is_finite() {
        Ok(())
    } else {
        refuse(key, x, "must be a finite number, 0 or more")
    }
}

fn finite(key: &str, x: f64) -> Checked {
    if x.is_finite() {
        Ok(())
    } else {
        refuse(key, x, "must be a finite number")
    }
}

fn at_least_one(key: &str, n: u64) -> Checked {
    if n >= 1 {
        Ok(())
    } else {
        refuse(key, n, "must be at least 1")
    }
}

impl TrainerConfig {
    /// Checks values that the types allow but training cannot use (Lightning's rules).
    pub fn validate(&self) -> Checked {
        at_least_one("trainer.accumulate_grad_batches", self.accumulate_grad_batches as u64)?;
        at_least_one("trainer.log_every_n_steps", self.log_every_n_steps)?;
        at_least_one("trainer.devices", self.devices as u64)?;
        at_least_one("trainer.num_nodes", self.num_nodes as u64)?;
        at_least_one("trainer.ddp_timeout_s", self.ddp_timeout_s)?;
        if let Some(n) = self.num_threads {
            at_least_one("trainer.num_threads", n as u64)?;
        }
        if let Some(v) = self.gradient_clip_val {
            // 0 turns clipping off, as in Lightning.
            non_negative("trainer.gradient_clip_val", v)?;
        }
        if let Some(n) = self.check_val_every_n_epoch {
            at_least_one("trainer.check_val_every_n_epoch", n as u64)?;
        }
        match self.val_check_interval {
            BatchLimit::Count(0) => {
                return refuse(
                    "trainer.val_check_interval",
                    0,
                    "must be at least 1 batch (to turn validation off, set trainer.limit_val_batches = 0)",
                )
            }
            BatchLimit::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return refuse(
                    "trainer.val_check_interval",
                    f,
                    "a fraction of the epoch must be in (0.0, 1.0] (to turn validation off, set \
                     trainer.limit_val_batches = 0)",
                )
            }
            BatchLimit::Fraction(f) if self.check_val_every_n_epoch.is_none() => {
                return refuse(
                    "trainer.val_check_interval",
                    f,
                    "must be a whole number of batches when trainer.check_val_every_n_epoch = \"none\"",
                )
            }
            _ => {}
        }
        for (key, limit) in [
            ("trainer.limit_train_batches", self.limit_train_batches),
            ("trainer.limit_val_batches", self.limit_val_batches),
            ("trainer.limit_test_batches", self.limit_test_batches),
            ("trainer.limit_predict_batches", self.limit_predict_batches),
        ] {
            if let BatchLimit::Fraction(f) = limit {
                if !(0.0..=1.0).contains(&f) {
                    return refuse(key, f, "a fraction must be between 0.0 and 1.0");
                }
            }
        }
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return refuse("trainer.name", format!("{:?}", self.name), "must be a plain folder name");
        }
        Ok(())
    }

    /// Checks `val_check_interval` against the epoch's length, once the loader is known:
    /// a count beyond the epoch is refused unless it counts across epochs (Lightning's rule).
    pub fn validate_epoch(&self, epoch_batches: usize, has_validation: bool) -> Checked {
        match (self.val_check_interval, self.check_val_every_n_epoch) {
            (BatchLimit::Count(n), Some(_)) if has_validation && n > epoch_batches => refuse(
                "trainer.val_check_interval",
                n,
                &format!(
                    "must be at most the {epoch_batches} training batches of an epoch; to validate every \
                     {n} batches across epochs set trainer.check_val_every_n_epoch = \"none\", to turn \
                     validation off set trainer.limit_val_batches = 0"
                ),
            ),
            _ => Ok(()),
        }
    }
}

impl OptimizerSpec {
    /// PyTorch's checks of the optimizer's hyperparameters, under `optimizer.*` keys.
    pub fn validate(&self) -> Checked {
        non_negative("optimizer.lr", self.lr())?;
        match *self {
            OptimizerSpec::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
                non_negative("optimizer.momentum", momentum)?;
                finite("optimizer.dampening", dampening)?;
                non_negative("optimizer.weight_decay", weight_decay)?;
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return refuse(
                        "optimizer.nesterov",
                        true,
                        "Nesterov momentum needs optimizer.momentum > 0 and optimizer.dampening = 0",
                    );
                }
            }
            OptimizerSpec::Adam { betas, eps, weight_decay, .. }
            | OptimizerSpec::AdamW { betas, eps, weight_decay, .. } => {
                for beta in [betas.0, betas.1] {
                    if !(0.0..1.0).contains(&beta) {
                        return refuse(
                            "optimizer.betas",
                            format!("[{}, {}]", betas.0, betas.1),
                            "each must be in [0, 1)",
                        );
                    }
                }
                non_negative("optimizer.eps", eps)?;
                non_negative("optimizer.weight_decay", weight_decay)?;
            }
        }
        Ok(())
    }
}

impl SchedulerConfig {
    /// PyTorch's checks of the schedule, and Lightning's of its `frequency` and `monitor`.
    pub fn validate(&self) -> Checked {
        at_least_one("lr_scheduler.frequency", self.frequency)?;
        match self.scheduler {
            SchedulerSpec::StepLr { step_size, gamma } => {
                at_least_one("lr_scheduler.scheduler.step_size", step_size)?;
                if !(gamma > 0.0 && gamma.is_finite()) {
                    return refuse("lr_scheduler.scheduler.gamma", gamma, "must be a finite number above 0");
                }
            }
            SchedulerSpec::WarmupCosine { warmup_steps, max_steps, min_lr } => {
                non_negative("lr_scheduler.scheduler.min_lr", min_lr)?;
                if max_steps < warmup_steps {
                    return refuse(
                        "lr_scheduler.scheduler.max_steps",
                        max_steps,
                        &format!("must be at least warmup_steps ({warmup_steps})"),
                    );
                }
            }
            SchedulerSpec::LinearDecay { total_steps, start_factor, end_factor } => {
                at_least_one("lr_scheduler.scheduler.total_steps", total_steps)?;
                if !(start_factor > 0.0 && start_factor <= 1.0) {
                    return refuse("lr_scheduler.scheduler.start_factor", start_factor, "must be in (0, 1]");
                }
                if !(0.0..=1.0).contains(&end_factor) {
                    return refuse("lr_scheduler.scheduler.end_factor", end_factor, "must be in [0, 1]");
                }
            }
            SchedulerSpec::ReduceOnPlateau { factor, threshold, min_lr, .. } => {
                if !(0.0..1.0).contains(&factor) {
                    return refuse("lr_scheduler.scheduler.factor", factor, "must be in [0, 1)");
                }
                non_negative("lr_scheduler.scheduler.threshold", threshold)?;
                non_negative("lr_scheduler.scheduler.min_lr", min_lr)?;
                if self.monitor.is_none() {
                    return refuse(
                        "lr_scheduler.monitor",
                        "none",
                        "reduce_on_plateau needs the metric to watch, e.g. monitor = \"val_loss\"",
                    );
                }
            }
        }
        Ok(())
    }
}

impl ModelCheckpoint {
    /// Lightning's checks of ModelCheckpoint's options.
    pub fn validate(&self) -> Checked {
        let key = "callbacks.model_checkpoint";
        if self.save_top_k < -1 {
            return refuse(
                &format!("{key}.save_top_k"),
                self.save_top_k,
                "must be -1 (all), 0 (none) or more",
            );
        }
        if self.monitor.is_none() && self.save_top_k > 1 {
            return refuse(
                &format!("{key}.save_top_k"),
                self.save_top_k,
                "needs a monitor to rank checkpoints by (to keep the latest k, monitor \"step\" in mode \"max\")",
            );
        }
        let by_steps = self.every_n_train_steps.is_some_and(|n| n > 0);
        let by_epochs = self.every_n_epochs.is_some_and(|n| n > 0);
        if by_steps && by_epochs {
            return refuse(
                &format!("{key}.every_n_train_steps"),
                self.every_n_train_steps.unwrap_or_default(),
                "and every_n_epochs are mutually exclusive",
            );
        }
        if self.monitor.as_deref() == Some("") {
            return refuse(&format!("{key}.monitor"), "\"\"", "must name a metric");
        }
        Ok(())
    }
}

impl EarlyStopping {
    /// Lightning's checks of EarlyStopping's options.
    pub fn validate(&self) -> Checked {
        let key = "callbacks.early_stopping";
        if self.monitor.is_empty() {
            return refuse(&format!("{key}.monitor"), "\"\"", "must name a metric");
        }
        finite(&format!("{key}.min_delta"), self.min_delta)?;
        if let Some(t) = self.stopping_threshold {
            finite(&format!("{key}.stopping_threshold"), t)?;
        }
        if let Some(t) = self.divergence_threshold {
            finite(&format!("{key}.divergence_threshold"), t)?;
        }
        Ok(())
    }
}

impl<M, D> RunConfig<M, D> {
    /// Every section's ranges; the optimizer's are checked once the model's choice and
    /// the `[optimizer]` changes are combined ([`crate::apply_optimizer`]).
    pub fn validate(&self) -> Checked {
        self.trainer.validate()?;
        if let Some(s) = &self.lr_scheduler {
            s.validate()?;
        }
        if let Some(c) = &self.callbacks.model_checkpoint {
            c.validate()?;
        }
        if let Some(c) = &self.callbacks.early_stopping {
            c.validate()?;
        }
        Ok(())
    }
}
