//! Learning-rate schedules with Lightning's `interval`, `frequency` and `monitor`:
//! StepLR, linear warm-up then cosine, linear decay, ReduceLROnPlateau.
use serde::{Deserialize, Serialize};

/// When a scheduler steps, as in Lightning's `lr_scheduler_config["interval"]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// After every `frequency` optimizer steps.
    Step,
    /// After every `frequency` epochs (after validation).
    #[default]
    Epoch,
}

/// Whether smaller or larger values of a monitored metric are better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Smaller is better (losses).
    #[default]
    Min,
    /// Larger is better (accuracies).
    Max,
}

impl Mode {
    /// Whether `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Mode::Min => a < b,
            Mode::Max => a > b,
        }
    }
}

/// Which schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerSpec {
    /// Multiply by `gamma` every `step_size` scheduler steps (PyTorch's StepLR).
    StepLr {
        /// Scheduler steps between decays.
        step_size: u64,
        /// Decay factor.
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
    /// Linear warm-up from 0, then cosine decay to `min_lr` at `max_steps` (nanoGPT's schedule).
    WarmupCosine {
        /// Scheduler steps of warm-up.
        warmup_steps: u64,
        /// Scheduler step at which `min_lr` is reached.
        max_steps: u64,
        /// Final learning rate.
        #[serde(default)]
        min_lr: f64,
    },
    /// Linear change from `start_factor` to `end_factor` of the base rate over `total_steps`.
    LinearDecay {
        /// Scheduler steps over which the factor moves.
        total_steps: u64,
        /// Factor at step 0.
        #[serde(default = "one")]
        start_factor: f64,
        /// Factor from `total_steps` on.
        #[serde(default)]
        end_factor: f64,
    },
    /// Multiply by `factor` when the monitored metric stops improving (PyTorch's ReduceLROnPlateau).
    ReduceOnPlateau {
        /// Whether the metric should go down or up.
        #[serde(default)]
        mode: Mode,
        /// Decay factor.
        #[serde(default = "default_plateau_factor")]
        factor: f64,
        /// Scheduler steps without improvement before decaying.
        #[serde(default = "default_patience")]
        patience: u64,
        /// Relative improvement that counts.
        #[serde(default = "default_threshold")]
        threshold: f64,
        /// Scheduler steps to wait after a decay.
        #[serde(default)]
        cooldown: u64,
        /// Lower bound of the rate.
        #[serde(default)]
        min_lr: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}
fn default_plateau_factor() -> f64 {
    0.1
}
fn default_patience() -> u64 {
    10
}
fn default_threshold() -> f64 {
    1e-4
}
fn default_frequency() -> u64 {
    1
}

/// A schedule with Lightning's `interval`, `frequency` and `monitor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The schedule.
    pub scheduler: SchedulerSpec,
    /// Step it per optimizer step or per epoch.
    #[serde(default)]
    pub interval: Interval,
    /// Step it every `frequency` intervals.
    #[serde(default = "default_frequency")]
    pub frequency: u64,
    /// Metric that `ReduceOnPlateau` watches.
    #[serde(default)]
    pub monitor: Option<String>,
}

impl SchedulerConfig {
    /// A schedule stepped after every optimizer step.
    pub fn every_step(scheduler: SchedulerSpec) -> Self {
        SchedulerConfig { scheduler, interval: Interval::Step, frequency: 1, monitor: None }
    }
    /// A schedule stepped after every epoch.
    pub fn every_epoch(scheduler: SchedulerSpec) -> Self {
        SchedulerConfig { interval: Interval::Epoch, ..Self::every_step(scheduler) }
    }
}

/// What a scheduler must remember across a resume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerState {
    /// Scheduler steps taken.
    pub steps: u64,
    /// ReduceOnPlateau: best metric so far.
    pub best: Option<f64>,
    /// ReduceOnPlateau: steps since the last improvement.
    pub num_bad: u64,
    /// ReduceOnPlateau: cooldown steps left.
    pub cooldown_left: u64,
    /// ReduceOnPlateau: current rate (it depends on history, not on the step count).
    pub plateau_lr: Option<f64>,
}
