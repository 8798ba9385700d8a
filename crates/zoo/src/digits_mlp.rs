//! `digits-mlp`: a 64→256→256→10 ReLU MLP classifying the 8x8 digits.
use crate::digits::{CLASSES, PIXELS};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};
use volt_train::{LogOptions, OptimizerConfig, OptimizerSpec, StepContext, VoltModule};

/// Hyperparameters of [`DigitsMlp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DigitsMlpConfig {
    /// Width of both hidden layers.
    pub hidden: i64,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for DigitsMlpConfig {
    fn default() -> Self {
        DigitsMlpConfig { hidden: 256, lr: 1e-3, weight_decay: 0.01 }
    }
}

/// The MLP and its variables.
pub struct DigitsMlp {
    vs: nn::VarStore,
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc3: nn::Linear,
    config: DigitsMlpConfig,
}

impl DigitsMlp {
    /// A freshly initialised model on `device` (PyTorch's default Linear initialisation).
    pub fn new(config: DigitsMlpConfig, device: tch::Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let h = config.hidden;
        let fc1 = nn::linear(&root / "fc1", PIXELS as i64, h, Default::default());
        let fc2 = nn::linear(&root / "fc2", h, h, Default::default());
        let fc3 = nn::linear(&root / "fc3", h, CLASSES as i64, Default::default());
        DigitsMlp { vs, fc1, fc2, fc3, config }
    }

    /// Hyperparameters.
    pub fn config(&self) -> &DigitsMlpConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.vs.device()
    }

    /// Logits `[B, 10]` for pixels `[B, 64]` in [0, 1].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.fc1.forward(x).relu();
        let x = self.fc2.forward(&x).relu();
        self.fc3.forward(&x)
    }

    fn evaluate(&self, batch: &(Tensor, Tensor), ctx: &mut StepContext, prefix: &str) {
        let (x, y) = batch;
        let logits = self.forward(x);
        let loss = logits.cross_entropy_for_logits(y);
        let acc = logits.accuracy_for_logits(y);
        // Synced so that under ddp every rank sees the accuracy of the whole split.
        let opts = LogOptions { sync_dist: true, ..LogOptions::prog_bar() };
        ctx.log_with(&format!("{prefix}_loss"), &loss, opts);
        ctx.log_with(&format!("{prefix}_acc"), &acc, opts);
    }
}

impl VoltModule for DigitsMlp {
    type Batch = (Tensor, Tensor);
    type Prediction = Tensor;

    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    fn training_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        let (x, y) = batch;
        let loss = self.forward(x).cross_entropy_for_logits(y);
        ctx.log_with("train_loss", &loss, LogOptions::prog_bar());
        Ok(loss)
    }

    fn validation_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        self.evaluate(batch, ctx, "val");
        Ok(())
    }

    fn test_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        self.evaluate(batch, ctx, "test");
        Ok(())
    }

    /// Class probabilities `[B, 10]`.
    fn predict_step(&mut self, batch: &Self::Batch, _ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        Ok(self.forward(&batch.0).softmax(-1, tch::Kind::Float))
    }

    fn configure_optimizers(&self) -> OptimizerConfig {
        OptimizerSpec::AdamW {
            lr: self.config.lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: self.config.weight_decay,
        }
        .into()
    }

    fn hparams(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or_default()
    }
}
