//! Learning-rate schedules: StepLR, linear warm-up then cosine, linear decay, ReduceLROnPlateau.
pub use volt_config::schedule::{Interval, Mode, SchedulerConfig, SchedulerSpec, SchedulerState};

/// A running schedule over a base learning rate.
#[derive(Clone, Debug)]
pub struct LrScheduler {
    config: SchedulerConfig,
    base_lr: f64,
    state: SchedulerState,
}

impl LrScheduler {
    /// A schedule starting from `base_lr`.
    pub fn new(config: SchedulerConfig, base_lr: f64) -> Self {
        LrScheduler { config, base_lr, state: SchedulerState::default() }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
    /// The state to checkpoint.
    pub fn state(&self) -> &SchedulerState {
        &self.state
    }
    /// Restores a checkpointed state.
    pub fn load_state(&mut self, state: SchedulerState) {
        self.state = state;
    }

    /// The learning rate for the current position.
    pub fn lr(&self) -> f64 {
        let t = self.state.steps;
        let base = self.base_lr;
        match self.config.scheduler {
            SchedulerSpec::StepLr { step_size, gamma } => base * gamma.powi((t / step_size.max(1)) as i32),
            SchedulerSpec::WarmupCosine { warmup_steps, max_steps, min_lr } => {
                if t < warmup_steps {
                    base * (t + 1) as f64 / (warmup_steps + 1) as f64
                } else if t >= max_steps {
                    min_lr
                } else {
                    let span = (max_steps - warmup_steps).max(1) as f64;
                    let ratio = (t - warmup_steps) as f64 / span;
                    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
                    min_lr + coeff * (base - min_lr)
                }
            }
            SchedulerSpec::LinearDecay { total_steps, start_factor, end_factor } => {
                let frac = (t.min(total_steps) as f64) / total_steps.max(1) as f64;
                base * (start_factor + (end_factor - start_factor) * frac)
            }
            SchedulerSpec::ReduceOnPlateau { .. } => self.state.plateau_lr.unwrap_or(base),
        }
    }

    /// Advances one interval; `metric` is the monitored value (plateau only).
    /// Returns the new learning rate.
    pub fn step(&mut self, metric: Option<f64>) -> f64 {
        self.state.steps += 1;
        if let SchedulerSpec::ReduceOnPlateau { mode, factor, patience, threshold, cooldown, min_lr } =
            self.config.scheduler
        {
            let Some(current) = metric else {
                return self.lr();
            };
            let improved = match self.state.best {
                _ if !current.is_finite() => false,
                None => true,
                Some(best) => match mode {
                    Mode::Min => current < best * (1.0 - threshold),
                    Mode::Max => current > best * (1.0 + threshold),
                },
            };
            if improved {
                self.state.best = Some(current);
                self.state.num_bad = 0;
            } else {
                self.state.num_bad += 1;
            }
            if self.state.cooldown_left > 0 {
                self.state.cooldown_left -= 1;
                self.state.num_bad = 0;
            }
            if self.state.num_bad > patience {
                let old = self.lr();
                let new = (old * factor).max(min_lr);
                // PyTorch ignores changes smaller than eps = 1e-8.
                if old - new > 1e-8 {
                    self.state.plateau_lr = Some(new);
                }
                self.state.cooldown_left = cooldown;
                self.state.num_bad = 0;
            }
        }
        self.lr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: SchedulerSpec, metrics: &[f64]) -> Vec<f64> {
        let mut s = LrScheduler::new(SchedulerConfig::every_epoch(spec), 1.0);
        metrics.iter().map(|&m| s.step(Some(m))).collect()
    }

    #[test]
    fn step_lr_decays_every_step_size() {
        let lrs = run(SchedulerSpec::StepLr { step_size: 2, gamma: 0.5 }, &[0.0; 5]);
        assert_eq!(lrs, vec![1.0, 0.5, 0.5, 0.25, 0.25]);
    }

    #[test]
    fn warmup_cosine_rises_then_reaches_min() {
        let mut s = LrScheduler::new(
            SchedulerConfig::every_step(SchedulerSpec::WarmupCosine {
                warmup_steps: 10,
                max_steps: 110,
                min_lr: 0.1,
            }),
            1.0,
        );
        assert!((s.lr() - 1.0 / 11.0).abs() < 1e-12);
        let lrs: Vec<f64> = (0..120).map(|_| s.step(None)).collect();
        assert!((lrs[9] - 1.0).abs() < 1e-12, "peak after warm-up");
        assert!((lrs[59] - 0.55).abs() < 1e-12, "half way down the cosine");
        assert!((lrs[119] - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_decay_reaches_end_factor() {
        let lrs =
            run(SchedulerSpec::LinearDecay { total_steps: 4, start_factor: 1.0, end_factor: 0.0 }, &[0.0; 5]);
        assert_eq!(lrs, vec![0.75, 0.5, 0.25, 0.0, 0.0]);
    }

    #[test]
    fn plateau_decays_after_patience() {
        let lrs = run(
            SchedulerSpec::ReduceOnPlateau {
                mode: Mode::Min,
                factor: 0.5,
                patience: 1,
                threshold: 0.0,
                cooldown: 0,
                min_lr: 0.0,
            },
            &[1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8],
        );
        assert_eq!(lrs, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
    }
}
