//! The built-in callbacks' options and the state they keep across resumes, with
//! Lightning's names: ModelCheckpoint, EarlyStopping, LearningRateMonitor. What they do
//! during `fit` is volt-train's.
use crate::loader::ConfigError;
use crate::schedule::{Interval, Mode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Metric name → value.
pub type Metrics = BTreeMap<String, f64>;

/// The value of `monitor` in `metrics`, or an error naming `who` and listing the metrics
/// there are.
pub fn monitored(metrics: &Metrics, who: &str, monitor: &str) -> Result<f64, ConfigError> {
    metrics.get(monitor).copied().ok_or_else(|| {
        let known: Vec<&str> = metrics.keys().map(String::as_str).collect();
        let nearest = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(monitor, k), k))
            .filter(|(d, k)| *d <= 3.max(k.len() / 3))
            .min_by_key(|(d, _)| *d)
            .map(|(_, k)| format!("; did you mean \"{k}\"?"))
            .unwrap_or_default();
        ConfigError::Invalid(format!(
            "{who}(monitor=\"{monitor}\") found no metric named \"{monitor}\"; \
             logged metrics are: [{}]{nearest}",
            known.join(", ")
        ))
    })
}

/// Saves checkpoints during `fit`, keeping the `save_top_k` best by `monitor`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCheckpoint {
    /// Folder of the checkpoints (default: `<version_N>/checkpoints`).
    pub dirpath: Option<PathBuf>,
    /// File name template, e.g. `"{epoch}-{val_loss:.4f}"` → `epoch=3-val_loss=0.1234`.
    pub filename: Option<String>,
    /// Metric that ranks checkpoints; `None` keeps the most recent ones.
    pub monitor: Option<String>,
    /// Whether a smaller or larger `monitor` is better.
    pub mode: Mode,
    /// How many to keep: -1 all, 0 none (only `last`), k the k best.
    pub save_top_k: i64,
    /// Also write `last.safetensors` whenever a checkpoint is saved.
    pub save_last: bool,
    /// Save every this many optimizer steps (instead of per epoch).
    pub every_n_train_steps: Option<u64>,
    /// Save every this many epochs (default 1).
    pub every_n_epochs: Option<usize>,
    /// Save at the end of the training epoch rather than after validation
    /// (default: only when the run has no validation).
    pub save_on_train_epoch_end: Option<bool>,
    /// What it has saved so far (restored from checkpoints on resume).
    #[serde(skip)]
    pub state: CheckpointState,
}

/// What ModelCheckpoint remembers across resumes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Saved checkpoints still kept, with their monitored value.
    pub best_k_models: Vec<(PathBuf, f64)>,
    /// The best checkpoint so far.
    pub best_model_path: Option<PathBuf>,
    /// Its monitored value.
    pub best_model_score: Option<f64>,
    /// The last checkpoint written.
    pub last_model_path: Option<PathBuf>,
    /// Global step of the last save (to avoid saving one state twice).
    pub last_saved_step: Option<u64>,
    /// Whether the missing-monitor warning was given (once per run, as Lightning).
    #[serde(skip)]
    pub warned_missing_monitor: bool,
}

impl Default for ModelCheckpoint {
    fn default() -> Self {
        ModelCheckpoint {
            dirpath: None,
            filename: None,
            monitor: None,
            mode: Mode::Min,
            save_top_k: 1,
            save_last: false,
            every_n_train_steps: None,
            every_n_epochs: None,
            save_on_train_epoch_end: None,
            state: CheckpointState::default(),
        }
    }
}

impl ModelCheckpoint {
    /// Keeps the `k` best checkpoints by `monitor` (and `last`).
    pub fn top_k(monitor: &str, mode: Mode, k: i64) -> Self {
        ModelCheckpoint {
            monitor: Some(monitor.to_owned()),
            mode,
            save_top_k: k,
            save_last: true,
            ..Self::default()
        }
    }

    /// The file name for the current state, from the template.
    pub fn format_name(&self, epoch: usize, step: u64, metrics: &Metrics) -> Result<String, ConfigError> {
        let template = self.filename.as_deref().unwrap_or("{epoch}-{step}");
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').ok_or_else(|| {
                ConfigError::Invalid(format!("ModelCheckpoint.filename \"{template}\": unclosed '{{'"))
            })? + open;
            let field = &rest[open + 1..close];
            let (name, precision) = match field.split_once(':') {
                Some((n, spec)) => {
                    let digits = spec.trim_start_matches('.').trim_end_matches('f');
                    let p = digits.parse::<usize>().map_err(|_| {
                        ConfigError::Invalid(format!(
                            "ModelCheckpoint.filename \"{template}\": format \"{spec}\" is not \".Nf\""
                        ))
                    })?;
                    (n, Some(p))
                }
                None => (field, None),
            };
            let value = match name {
                "epoch" => format!("{epoch}"),
                "step" => format!("{step}"),
                metric => {
                    // Lightning formats a metric that is not logged (yet) as 0.
                    let v = metrics.get(metric).copied().unwrap_or(0.0);
                    match precision {
                        Some(p) => format!("{v:.p$}"),
                        None => format!("{v}"),
                    }
                }
            };
            out.push_str(&format!("{name}={value}"));
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Stops `fit` when `monitor` has not improved by `min_delta` for `patience` checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// The metric to watch.
    pub monitor: String,
    /// Smallest change that counts as an improvement.
    pub min_delta: f64,
    /// Checks without improvement before stopping.
    pub patience: usize,
    /// Whether smaller or larger is better.
    pub mode: Mode,
    /// Stop as soon as the metric is better than this.
    pub stopping_threshold: Option<f64>,
    /// Stop as soon as the metric is worse than this.
    pub divergence_threshold: Option<f64>,
    /// Stop when the metric is NaN or infinite.
    pub check_finite: bool,
    /// Check at the end of the training epoch instead of after validation; unset, Lightning's
    /// rule: at the epoch's end when validation runs once an epoch (or not at all).
    pub check_on_train_epoch_end: Option<bool>,
    /// A monitor that is not logged when checked is an error (else a warning), as Lightning.
    pub strict: bool,
    /// What it has seen so far (restored from checkpoints on resume).
    #[serde(skip)]
    pub state: EarlyStoppingState,
}

/// What EarlyStopping remembers across resumes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStoppingState {
    /// Checks since the last improvement.
    pub wait_count: usize,
    /// Best value so far.
    pub best_score: Option<f64>,
    /// Epoch at which it asked to stop.
    pub stopped_epoch: Option<usize>,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping {
            monitor: "val_loss".into(),
            min_delta: 0.0,
            patience: 3,
            mode: Mode::Min,
            stopping_threshold: None,
            divergence_threshold: None,
            check_finite: true,
            check_on_train_epoch_end: None,
            strict: true,
            state: EarlyStoppingState::default(),
        }
    }
}

impl EarlyStopping {
    /// Watches `monitor` with `patience` and the other defaults.
    pub fn new(monitor: &str, mode: Mode, patience: usize) -> Self {
        EarlyStopping { monitor: monitor.to_owned(), mode, patience, ..Self::default() }
    }

    /// Applies one observation; returns why to stop, if it should.
    pub fn observe(&mut self, current: f64, epoch: usize) -> Option<String> {
        let m = &self.monitor;
        let reason = if self.check_finite && !current.is_finite() {
            Some(format!("{m} = {current} is not finite"))
        } else if self.stopping_threshold.is_some_and(|t| self.mode.better(current, t)) {
            Some(format!("{m} = {current} reached the stopping threshold {:?}", self.stopping_threshold))
        } else if self.divergence_threshold.is_some_and(|t| self.mode.better(t, current)) {
            Some(format!("{m} = {current} is past the divergence threshold {:?}", self.divergence_threshold))
        } else {
            let delta = self.min_delta.abs();
            let improved = match (self.state.best_score, self.mode) {
                _ if !current.is_finite() => false,
                (None, _) => true,
                (Some(best), Mode::Min) => current < best - delta,
                (Some(best), Mode::Max) => current > best + delta,
            };
            if improved {
                self.state.best_score = Some(current);
                self.state.wait_count = 0;
                None
            } else {
                self.state.wait_count += 1;
                (self.state.wait_count >= self.patience).then(|| {
                    format!(
                        "{m} did not improve in the last {} checks; best {:?}",
                        self.state.wait_count, self.state.best_score
                    )
                })
            }
        };
        if reason.is_some() {
            self.state.stopped_epoch = Some(epoch);
        }
        reason
    }
}

/// Logs the learning rate every step or every epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearningRateMonitor {
    /// `step` or `epoch` (default: step).
    pub logging_interval: Option<Interval>,
}

/// Where `volt predict` writes its predictions (Lightning's prediction writer callback).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictionWriter {
    /// Folder of the `predictions-rank<R>.jsonl` files (default:
    /// `<default_root_dir>/<name>/predictions`).
    pub output_dir: Option<PathBuf>,
}
