//! What steps log, and how it is reduced: Lightning's `self.log` semantics.
use std::collections::BTreeMap;
use tch::Tensor;

/// Metric name → value.
pub type Metrics = BTreeMap<String, f64>;

/// Which loop a step runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// `training_step`.
    Train,
    /// `validation_step` (also during the sanity check).
    Validate,
    /// `test_step`.
    Test,
    /// `predict_step`.
    Predict,
}

/// How one logged value is reduced and shown, as in Lightning's `self.log(...)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LogOptions {
    /// Log the value of every step; defaults to true in training, false elsewhere.
    pub on_step: Option<bool>,
    /// Log the batch-size-weighted mean over the epoch; defaults to false in training, true elsewhere.
    pub on_epoch: Option<bool>,
    /// Show it in the progress bar.
    pub prog_bar: bool,
    /// Reduce across data-parallel ranks before logging.
    pub sync_dist: bool,
}

impl LogOptions {
    /// Shown in the progress bar, otherwise the defaults.
    pub fn prog_bar() -> Self {
        LogOptions { prog_bar: true, ..LogOptions::default() }
    }
}

/// A value a step can log.
pub trait Loggable {
    /// The value as a float (a tensor must hold one element).
    fn to_f64(&self) -> f64;
}

impl Loggable for f64 {
    fn to_f64(&self) -> f64 {
        *self
    }
}
impl Loggable for f32 {
    fn to_f64(&self) -> f64 {
        f64::from(*self)
    }
}
impl Loggable for Tensor {
    fn to_f64(&self) -> f64 {
        self.double_value(&[])
    }
}
impl<T: Loggable + ?Sized> Loggable for &T {
    fn to_f64(&self) -> f64 {
        (**self).to_f64()
    }
}

/// One `log` call, with defaults resolved for its stage.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub name: String,
    pub value: f64,
    pub on_step: bool,
    pub on_epoch: bool,
    pub prog_bar: bool,
    pub sync_dist: bool,
    pub batch_size: usize,
}

impl Record {
    pub fn new(stage: Stage, name: &str, value: f64, opts: LogOptions, batch_size: usize) -> Self {
        let training = stage == Stage::Train;
        Record {
            name: name.to_owned(),
            value,
            on_step: opts.on_step.unwrap_or(training),
            on_epoch: opts.on_epoch.unwrap_or(!training),
            prog_bar: opts.prog_bar,
            sync_dist: opts.sync_dist,
            batch_size,
        }
    }

    /// The name under which the per-step value is logged.
    pub fn step_name(&self) -> String {
        if self.on_epoch {
            format!("{}_step", self.name)
        } else {
            self.name.clone()
        }
    }

    /// The name under which the epoch mean is logged.
    pub fn epoch_name(&self) -> String {
        if self.on_step {
            format!("{}_epoch", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// Batch-size-weighted running means of the values logged `on_epoch` in one loop.
#[derive(Debug, Default)]
pub(crate) struct EpochAccumulator {
    sums: BTreeMap<String, (f64, f64, bool, bool)>,
}

impl EpochAccumulator {
    pub fn add(&mut self, r: &Record) {
        let w = r.batch_size.max(1) as f64;
        let e = self.sums.entry(r.epoch_name()).or_insert((0.0, 0.0, r.prog_bar, r.sync_dist));
        e.0 += r.value * w;
        e.1 += w;
    }

    /// The means, with whether each goes to the progress bar and needs a cross-rank reduce.
    pub fn take(&mut self) -> Vec<(String, f64, f64, bool, bool)> {
        std::mem::take(&mut self.sums)
            .into_iter()
            .map(|(k, (s, w, bar, sync))| (k, s, w, bar, sync))
            .collect()
    }
}
