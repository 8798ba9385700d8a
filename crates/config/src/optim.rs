//! Optimizer choices with PyTorch's names and defaults (volt-train runs them).
use crate::schedule::SchedulerConfig;
use serde::{Deserialize, Serialize};

/// Which optimizer, with PyTorch's parameter names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// Stochastic gradient descent.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum factor.
        #[serde(default)]
        momentum: f64,
        /// Dampening of the momentum.
        #[serde(default)]
        dampening: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with L2 penalty added to the gradient.
    Adam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running means of the gradient and its square.
        #[serde(default = "default_betas")]
        betas: (f64, f64),
        /// Term added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// L2 penalty.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam with decoupled weight decay.
    #[serde(rename = "adamw")]
    AdamW {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running means of the gradient and its square.
        #[serde(default = "default_betas")]
        betas: (f64, f64),
        /// Term added to the denominator.
        #[serde(default = "default_eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default = "default_adamw_decay")]
        weight_decay: f64,
    },
}

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}
fn default_eps() -> f64 {
    1e-8
}
fn default_adamw_decay() -> f64 {
    0.01
}

impl OptimizerSpec {
    /// AdamW with PyTorch's defaults and learning rate `lr`.
    pub fn adamw(lr: f64) -> Self {
        OptimizerSpec::AdamW {
            lr,
            betas: default_betas(),
            eps: default_eps(),
            weight_decay: default_adamw_decay(),
        }
    }
    /// AdamW with PyTorch's epsilon and the given rate, betas and decoupled weight decay.
    pub fn adamw_with(lr: f64, betas: (f64, f64), weight_decay: f64) -> Self {
        OptimizerSpec::AdamW { lr, betas, eps: default_eps(), weight_decay }
    }
    /// Adam with PyTorch's defaults and learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        OptimizerSpec::Adam { lr, betas: default_betas(), eps: default_eps(), weight_decay: 0.0 }
    }
    /// Plain SGD with learning rate `lr`.
    pub fn sgd(lr: f64) -> Self {
        OptimizerSpec::Sgd { lr, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
    }
    /// The configured learning rate.
    pub fn lr(&self) -> f64 {
        match *self {
            OptimizerSpec::Sgd { lr, .. }
            | OptimizerSpec::Adam { lr, .. }
            | OptimizerSpec::AdamW { lr, .. } => lr,
        }
    }
    /// PyTorch's class name, used in metric names such as `lr-AdamW`.
    pub fn class_name(&self) -> &'static str {
        match self {
            OptimizerSpec::Sgd { .. } => "SGD",
            OptimizerSpec::Adam { .. } => "Adam",
            OptimizerSpec::AdamW { .. } => "AdamW",
        }
    }
}

/// What `configure_optimizers` returns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// An optional learning-rate scheduler.
    pub lr_scheduler: Option<SchedulerConfig>,
}

impl From<OptimizerSpec> for OptimizerConfig {
    fn from(optimizer: OptimizerSpec) -> Self {
        OptimizerConfig { optimizer, lr_scheduler: None }
    }
}

/// How gradients are clipped before the optimizer step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClipAlgorithm {
    /// Rescale so that the global L2 norm is at most the threshold.
    #[default]
    Norm,
    /// Clamp each element to ±threshold.
    Value,
}
