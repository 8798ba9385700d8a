//! Lightning's ModelCheckpoint: periodic checkpoints, the top-k by a metric, and `last`.
use super::{parse_state, Callback, CallbackContext};
use crate::checkpoint::LAST_NAME;
use crate::error::{Error, Result};
use crate::schedule::Mode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

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

    fn dir(&self, ctx: &CallbackContext) -> Result<PathBuf> {
        match (&self.dirpath, ctx.log_dir) {
            (Some(d), _) => Ok(d.clone()),
            (None, Some(log_dir)) => Ok(log_dir.join("checkpoints")),
            (None, None) => {
                Err(Error::Config("ModelCheckpoint needs `dirpath` when the run has no log folder".into()))
            }
        }
    }

    /// The file name for the current state, from the template.
    pub fn format_name(&self, ctx: &CallbackContext) -> Result<String> {
        let template = self.filename.as_deref().unwrap_or("{epoch}-{step}");
        let mut out = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..].find('}').ok_or_else(|| {
                Error::Config(format!("ModelCheckpoint.filename \"{template}\": unclosed '{{'"))
            })? + open;
            let field = &rest[open + 1..close];
            let (name, precision) = match field.split_once(':') {
                Some((n, spec)) => {
                    let digits = spec.trim_start_matches('.').trim_end_matches('f');
                    let p = digits.parse::<usize>().map_err(|_| {
                        Error::Config(format!(
                            "ModelCheckpoint.filename \"{template}\": format \"{spec}\" is not \".Nf\""
                        ))
                    })?;
                    (n, Some(p))
                }
                None => (field, None),
            };
            let value = match name {
                "epoch" => format!("{}", ctx.progress.epoch),
                "step" => format!("{}", ctx.progress.global_step),
                metric => {
                    let v = ctx.monitored("ModelCheckpoint.filename", metric)?;
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

    fn save(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if !ctx.is_global_zero {
            return Ok(());
        }
        if self.state.last_saved_step == Some(ctx.progress.global_step) {
            return Ok(());
        }
        let dir = self.dir(ctx)?;
        self.state.last_saved_step = Some(ctx.progress.global_step);
        if self.save_top_k != 0 {
            self.save_top_k_checkpoint(ctx, &dir)?;
        }
        if self.save_last {
            let last = dir.join(LAST_NAME);
            ctx.save_checkpoint(&last);
            self.state.last_model_path = Some(last);
        }
        Ok(())
    }

    fn save_top_k_checkpoint(&mut self, ctx: &mut CallbackContext, dir: &std::path::Path) -> Result<()> {
        let score = match &self.monitor {
            Some(m) => ctx.monitored("ModelCheckpoint", m)?,
            None => ctx.progress.global_step as f64,
        };
        if !score.is_finite() {
            // A NaN or infinite value never ranks among the best.
            return Ok(());
        }
        let mode = if self.monitor.is_some() { self.mode } else { Mode::Max };
        let k = self.save_top_k;
        let full = k > 0 && self.state.best_k_models.len() as i64 >= k;
        let worst = self
            .state
            .best_k_models
            .iter()
            .enumerate()
            .reduce(|a, b| if mode.better(a.1 .1, b.1 .1) { b } else { a })
            .map(|(i, (_, s))| (i, *s));
        if full && !worst.is_some_and(|(_, w)| mode.better(score, w)) {
            return Ok(());
        }
        let mut path = dir.join(format!("{}.safetensors", self.format_name(ctx)?));
        let mut n = 1;
        while path.exists() || self.state.best_k_models.iter().any(|(p, _)| *p == path) {
            path = dir.join(format!("{}-v{n}.safetensors", self.format_name(ctx)?));
            n += 1;
        }
        ctx.save_checkpoint(&path);
        if full {
            if let Some((i, _)) = worst {
                let (evicted, _) = self.state.best_k_models.remove(i);
                ctx.remove_checkpoint(evicted);
            }
        }
        self.state.best_k_models.push((path, score));
        let best =
            self.state.best_k_models.iter().reduce(|a, b| if mode.better(b.1, a.1) { b } else { a }).cloned();
        if let Some((p, s)) = best {
            self.state.best_model_path = Some(p);
            self.state.best_model_score = self.monitor.as_ref().map(|_| s);
        }
        Ok(())
    }

    fn on_train_epoch_end_saves(&self, ctx: &CallbackContext) -> bool {
        self.every_n_train_steps.is_none() && self.save_on_train_epoch_end.unwrap_or(!ctx.has_validation)
    }

    fn epoch_due(&self, ctx: &CallbackContext) -> bool {
        let n = self.every_n_epochs.unwrap_or(1);
        n > 0 && (ctx.progress.epoch + 1) % n == 0
    }
}

impl Callback for ModelCheckpoint {
    fn name(&self) -> String {
        format!(
            "ModelCheckpoint{{monitor={},mode={:?}}}",
            self.monitor.as_deref().unwrap_or("None"),
            self.mode
        )
    }

    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> Result<()> {
        match self.every_n_train_steps {
            Some(n) if n > 0 && ctx.progress.global_step % n == 0 => self.save(ctx),
            _ => Ok(()),
        }
    }

    fn on_validation_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.on_train_epoch_end_saves(ctx) || self.every_n_train_steps.is_some() {
            return Ok(());
        }
        if self.epoch_due(ctx) {
            self.save(ctx)?;
        }
        Ok(())
    }

    fn on_train_epoch_end(&mut self, ctx: &mut CallbackContext) -> Result<()> {
        if self.on_train_epoch_end_saves(ctx) && self.epoch_due(ctx) {
            self.save(ctx)?;
        }
        Ok(())
    }

    fn state_dict(&self) -> Value {
        serde_json::to_value(&self.state).unwrap_or(Value::Null)
    }

    fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        self.state = parse_state(&self.name(), state)?;
        Ok(())
    }

    fn best_model_path(&self) -> Option<PathBuf> {
        self.state.best_model_path.clone()
    }
}
