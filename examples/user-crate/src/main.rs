//! A user's crate: its own model (a linear regressor) and data (noisy points on a line),
//! with the whole volt command line from one call.
//!
//! cargo run -p volt-example-user-crate -- fit --config examples/user-crate/fit.toml
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};
use volt::{CliData, CliModel};
use volt_train::{
    DataLoader, DataModule, Dataset, LoaderOptions, OptimizerConfig, OptimizerSpec, StepContext, VoltModule,
};

/// `[model]`: a line fit by SGD.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LineConfig {
    lr: f64,
}

impl Default for LineConfig {
    fn default() -> Self {
        LineConfig { lr: 0.1 }
    }
}

struct Line {
    vs: nn::VarStore,
    linear: nn::Linear,
    lr: f64,
}

impl VoltModule for Line {
    type Batch = (Tensor, Tensor);
    type Prediction = Tensor;
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn training_step(&mut self, (x, y): &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        let loss = self.linear.forward(x).mse_loss(y, tch::Reduction::Mean);
        ctx.log("train_loss", &loss);
        Ok(loss)
    }
    fn validation_step(&mut self, (x, y): &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        ctx.log("val_loss", self.linear.forward(x).mse_loss(y, tch::Reduction::Mean));
        Ok(())
    }
    fn configure_optimizers(&self) -> OptimizerConfig {
        OptimizerSpec::sgd(self.lr).into()
    }
}

impl CliModel for Line {
    type Config = LineConfig;
    fn build(config: &LineConfig, device: tch::Device) -> volt_train::Result<Self> {
        let vs = nn::VarStore::new(device);
        let linear = nn::linear(vs.root() / "linear", 1, 1, Default::default());
        Ok(Line { vs, linear, lr: config.lr })
    }
}

/// `[data]`: points on y = slope * x + 1.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PointsConfig {
    slope: f32,
    points: usize,
    batch_size: usize,
}

impl Default for PointsConfig {
    fn default() -> Self {
        PointsConfig { slope: 2.0, points: 256, batch_size: 16 }
    }
}

struct Points {
    config: PointsConfig,
}

struct OnTheLine(PointsConfig);

impl Dataset for OnTheLine {
    type Item = (f32, f32);
    fn len(&self) -> usize {
        self.0.points
    }
    fn get(&self, i: usize) -> volt_train::Result<(f32, f32)> {
        let x = i as f32 / self.0.points as f32 * 2.0 - 1.0;
        Ok((x, self.0.slope * x + 1.0))
    }
}

fn collate(items: Vec<(f32, f32)>) -> volt_train::Result<(Tensor, Tensor)> {
    let (x, y): (Vec<f32>, Vec<f32>) = items.into_iter().unzip();
    Ok((Tensor::from_slice(&x).view([-1, 1]), Tensor::from_slice(&y).view([-1, 1])))
}

impl Points {
    fn loader(&self, shuffle: bool) -> Option<DataLoader<(Tensor, Tensor)>> {
        let options =
            LoaderOptions { batch_size: self.config.batch_size, shuffle, ..LoaderOptions::default() };
        DataLoader::new(OnTheLine(self.config.clone()), collate, options).ok()
    }
}

impl DataModule for Points {
    type Batch = (Tensor, Tensor);
    fn train_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.loader(true)
    }
    fn val_dataloader(&self) -> Option<DataLoader<Self::Batch>> {
        self.loader(false)
    }
}

impl CliData for Points {
    type Config = PointsConfig;
    fn build(config: &PointsConfig) -> volt_train::Result<Self> {
        if config.batch_size == 0 || config.points == 0 {
            return Err(volt_train::Error::Config(
                "data.batch_size and data.points must be at least 1".into(),
            ));
        }
        Ok(Points { config: config.clone() })
    }
}

fn main() -> std::process::ExitCode {
    volt::run::<Line, Points>()
}
