//! The sections of a run's configuration file, as the command line reads them.
use crate::callbacks::{EarlyStopping, LearningRateMonitor, ModelCheckpoint, PredictionWriter};
use crate::loader::ConfigError;
use crate::optim::{OptimizerConfig, OptimizerSpec};
use crate::schedule::SchedulerConfig;
use crate::trainer::TrainerConfig;
use serde::{Deserialize, Serialize};

/// Everything a run is made of, one section per part of the library.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig<M, D> {
    /// Seed of initialisation, shuffling and dropout (overrides `trainer.seed`).
    pub seed: Option<u64>,
    /// Every Trainer option.
    pub trainer: TrainerConfig,
    /// The model's own options.
    pub model: M,
    /// The data's own options.
    pub data: D,
    /// Changes to the optimizer the model chooses.
    pub optimizer: OptimizerOverrides,
    /// Replaces the model's learning-rate scheduler.
    pub lr_scheduler: Option<SchedulerConfig>,
    /// Built-in callbacks to add.
    pub callbacks: CallbacksConfig,
}

/// Fields that replace those of the optimizer `configure_optimizers` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerOverrides {
    /// `sgd`, `adam` or `adamw`: switch optimizers (keeping the learning rate).
    pub name: Option<String>,
    /// Learning rate.
    pub lr: Option<f64>,
    /// Weight decay.
    pub weight_decay: Option<f64>,
    /// Adam's betas.
    pub betas: Option<(f64, f64)>,
    /// Adam's epsilon.
    pub eps: Option<f64>,
    /// SGD's momentum.
    pub momentum: Option<f64>,
    /// SGD's dampening.
    pub dampening: Option<f64>,
    /// SGD's Nesterov switch.
    pub nesterov: Option<bool>,
}

/// The built-in callbacks, each off unless configured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallbacksConfig {
    /// Lightning's ModelCheckpoint.
    pub model_checkpoint: Option<ModelCheckpoint>,
    /// Lightning's EarlyStopping.
    pub early_stopping: Option<EarlyStopping>,
    /// Lightning's LearningRateMonitor.
    pub lr_monitor: Option<LearningRateMonitor>,
    /// Where `predict` writes (it always writes).
    pub prediction_writer: PredictionWriter,
}

impl PartialEq for CallbacksConfig {
    fn eq(&self, other: &Self) -> bool {
        // The callbacks hold run-time state; compare what a config file can say.
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

/// The optimizer the model chose, with the configured changes.
pub fn apply_optimizer(
    mut chosen: OptimizerConfig,
    o: &OptimizerOverrides,
    scheduler: &Option<SchedulerConfig>,
) -> Result<OptimizerConfig, ConfigError> {
    if let Some(name) = &o.name {
        let lr = chosen.optimizer.lr();
        chosen.optimizer = match name.as_str() {
            "sgd" => OptimizerSpec::sgd(lr),
            "adam" => OptimizerSpec::adam(lr),
            "adamw" => OptimizerSpec::adamw(lr),
            other => {
                return Err(ConfigError::WrongType {
                    key: "optimizer.name".into(),
                    value: format!("{other:?}"),
                    expected: "one of \"sgd\", \"adam\", \"adamw\"".into(),
                })
            }
        };
    }
    let class = chosen.optimizer.class_name();
    let only = |key: &str, which: &str| {
        ConfigError::Invalid(format!("`optimizer.{key}` applies to {which} only; this run uses {class}"))
    };
    let sgd_only = [
        ("momentum", o.momentum.is_some()),
        ("dampening", o.dampening.is_some()),
        ("nesterov", o.nesterov.is_some()),
    ];
    let adam_only = [("betas", o.betas.is_some()), ("eps", o.eps.is_some())];
    match &mut chosen.optimizer {
        OptimizerSpec::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
            if let Some((key, _)) = adam_only.iter().find(|(_, set)| *set) {
                return Err(only(key, "adam and adamw"));
            }
            set_if(lr, o.lr);
            set_if(momentum, o.momentum);
            set_if(dampening, o.dampening);
            set_if(nesterov, o.nesterov);
            set_if(weight_decay, o.weight_decay);
        }
        OptimizerSpec::Adam { lr, betas, eps, weight_decay }
        | OptimizerSpec::AdamW { lr, betas, eps, weight_decay } => {
            if let Some((key, _)) = sgd_only.iter().find(|(_, set)| *set) {
                return Err(only(key, "sgd"));
            }
            set_if(lr, o.lr);
            set_if(betas, o.betas);
            set_if(eps, o.eps);
            set_if(weight_decay, o.weight_decay);
        }
    }
    if scheduler.is_some() {
        chosen.lr_scheduler = scheduler.clone();
    }
    chosen.optimizer.validate()?;
    Ok(chosen)
}

fn set_if<T: Copy>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
