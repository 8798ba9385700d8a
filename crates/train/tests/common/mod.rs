//! A tiny regression module whose validation metric follows a script, for testing the
//! Trainer's callbacks and failure handling without a real dataset.
#![allow(dead_code)]
use std::path::Path;
use tch::{nn, nn::Module, Device, Tensor};
use volt_train::{
    DataLoader, DataModule, Dataset, LoaderOptions, OptimizerConfig, OptimizerSpec, SchedulerConfig,
    StepContext, TrainerConfig, VoltModule,
};

/// `y = x · [1, -2, 3, 0.5]` for 64 fixed points.
pub struct Points;

impl Dataset for Points {
    type Item = ([f32; 4], f32);
    fn len(&self) -> usize {
        64
    }
    fn get(&self, i: usize) -> volt_train::Result<Self::Item> {
        let x = [0, 1, 2, 3].map(|j| (((i * 7 + j * 13) % 17) as f32 / 8.0) - 1.0);
        let y = x[0] - 2.0 * x[1] + 3.0 * x[2] + 0.5 * x[3];
        Ok((x, y))
    }
}

fn collate(items: Vec<([f32; 4], f32)>) -> volt_train::Result<(Tensor, Tensor)> {
    let xs: Vec<f32> = items.iter().flat_map(|(x, _)| *x).collect();
    let ys: Vec<f32> = items.iter().map(|(_, y)| *y).collect();
    Ok((Tensor::from_slice(&xs).view([-1, 4]), Tensor::from_slice(&ys).view([-1, 1])))
}

/// 64 points in batches of 8: 8 training batches an epoch, 8 validation batches.
pub struct PointsData {
    pub batch_size: usize,
}

impl DataModule for PointsData {
    type Batch = (Tensor, Tensor);
    fn train_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        let opts = LoaderOptions { batch_size: self.batch_size, shuffle: true, ..LoaderOptions::default() };
        DataLoader::new(Points, collate, opts).ok()
    }
    fn val_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        let opts = LoaderOptions { batch_size: self.batch_size, ..LoaderOptions::default() };
        DataLoader::new(Points, collate, opts).ok()
    }
}

/// Linear regression that logs `score = script[epoch]` in validation, and can turn its
/// loss into NaN at a chosen global step.
pub struct Scripted {
    pub vs: nn::VarStore,
    pub linear: nn::Linear,
    pub script: Vec<f64>,
    pub nan_at_step: Option<u64>,
    pub lr: f64,
    pub scheduler: Option<SchedulerConfig>,
    /// Calls of `training_step` and `validation_step` so far.
    pub train_steps: usize,
    pub val_steps: usize,
}

impl Scripted {
    pub fn new(script: Vec<f64>) -> Self {
        let vs = nn::VarStore::new(Device::Cpu);
        let linear = nn::linear(vs.root() / "linear", 4, 1, Default::default());
        Scripted {
            vs,
            linear,
            script,
            nan_at_step: None,
            lr: 0.05,
            scheduler: None,
            train_steps: 0,
            val_steps: 0,
        }
    }
}

impl VoltModule for Scripted {
    type Batch = (Tensor, Tensor);
    type Prediction = Tensor;
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn training_step(&mut self, (x, y): &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        self.train_steps += 1;
        let loss = self.linear.forward(x).mse_loss(y, tch::Reduction::Mean);
        ctx.log("train_loss", &loss);
        if self.nan_at_step == Some(ctx.global_step()) {
            return Ok(loss * f64::NAN);
        }
        Ok(loss)
    }
    fn validation_step(&mut self, (x, y): &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        self.val_steps += 1;
        let loss = self.linear.forward(x).mse_loss(y, tch::Reduction::Mean);
        ctx.log("val_loss", &loss);
        let score = self.script.get(ctx.epoch()).copied().unwrap_or(f64::NAN);
        ctx.log("score", score);
        Ok(())
    }
    fn predict_step(&mut self, (x, _): &Self::Batch, _ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        Ok(self.linear.forward(x))
    }
    fn configure_optimizers(&self) -> OptimizerConfig {
        OptimizerConfig { optimizer: OptimizerSpec::sgd(self.lr), lr_scheduler: self.scheduler.clone() }
    }
}

/// Options for tests: no sanity check, no bar, no summary, no loggers, checkpoints on.
pub fn config(root: &Path) -> TrainerConfig {
    TrainerConfig {
        default_root_dir: root.to_owned(),
        num_sanity_val_steps: 0,
        enable_progress_bar: false,
        enable_model_summary: false,
        loggers: vec![],
        seed: Some(0),
        ..TrainerConfig::default()
    }
}

/// Every `*.safetensors` file name in `dir`, sorted.
pub fn checkpoint_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
