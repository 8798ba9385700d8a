//! `trainer.precision`: bf16-mixed runs forward passes in bfloat16 over float32 weights
//! and optimizer state, bf16-true keeps the weights themselves in bfloat16, 32-true
//! changes nothing, autocast ends with the step, and 16-mixed is refused on the CPU.
mod common;

use common::{config, PointsData};
use std::sync::{Arc, Mutex};
use tch::{nn, nn::Module, Device, Kind, Tensor};
use volt_train::{
    Checkpoint, OptimizerConfig, OptimizerSpec, Precision, StepContext, Trainer, TrainerConfig, VoltModule,
};

/// Linear regression that records the dtype of its layer's output in every step.
struct Probe {
    vs: nn::VarStore,
    linear: nn::Linear,
    seen: Arc<Mutex<Vec<(&'static str, Kind)>>>,
}

/// libtorch's generator is process-global: tests that seed and build a probe run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Probe {
    fn new() -> Self {
        volt_train::seed_everything(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let linear = nn::linear(vs.root() / "linear", 4, 1, Default::default());
        Probe { vs, linear, seen: Arc::default() }
    }
    fn loss(&self, stage: &'static str, (x, y): &(Tensor, Tensor)) -> Tensor {
        let out = self.linear.forward(x);
        self.seen.lock().expect("lock").push((stage, out.kind()));
        out.to_kind(Kind::Float).mse_loss(y, tch::Reduction::Mean)
    }
}

impl VoltModule for Probe {
    type Batch = (Tensor, Tensor);
    type Prediction = Tensor;
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn training_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        let loss = self.loss("train", batch);
        ctx.log("train_loss", &loss);
        Ok(loss)
    }
    fn validation_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        let loss = self.loss("val", batch);
        ctx.log("val_loss", &loss);
        Ok(())
    }
    fn configure_optimizers(&self) -> OptimizerConfig {
        OptimizerConfig {
            optimizer: OptimizerSpec::AdamW { lr: 0.05, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0 },
            lr_scheduler: None,
        }
    }
}

/// Fits a probe for 2 epochs at `precision`; the dtypes it saw, its weights' dtype, the
/// last checkpoint's optimizer-state dtypes, and the final validation loss.
fn fit(precision: Precision) -> (Vec<(&'static str, Kind)>, Kind, Vec<Kind>, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut probe = Probe::new();
    let config = TrainerConfig { max_epochs: Some(2), precision, ..config(dir.path()) };
    let out = Trainer::new(config)
        .expect("trainer")
        .fit(&mut probe, &PointsData { batch_size: 8 }, None)
        .expect("fit");
    let ckpt = Checkpoint::load(&out.last_checkpoint.expect("last")).expect("load");
    let states = ckpt
        .tensors
        .iter()
        .filter(|(n, _)| n.starts_with("optimizer.") && n.contains("exp_avg"))
        .map(|(_, t)| t.kind())
        .collect();
    let weight = probe.linear.ws.kind();
    let seen = probe.seen.lock().expect("lock").clone();
    (seen, weight, states, out.metrics["val_loss"])
}

#[test]
fn bf16_mixed_runs_steps_in_bfloat16_over_float32_weights() {
    let _serial = serial();
    let (seen, weight, states, loss) = fit(Precision::Bf16Mixed);
    assert!(seen.iter().any(|(s, _)| *s == "train") && seen.iter().any(|(s, _)| *s == "val"));
    assert!(seen.iter().all(|(_, k)| *k == Kind::BFloat16), "{seen:?}");
    assert_eq!(weight, Kind::Float, "master weights stay float32");
    assert!(!states.is_empty() && states.iter().all(|k| *k == Kind::Float), "{states:?}");
    assert!(loss.is_finite());
    // The autocast ended with the steps: this thread computes in float32 again.
    let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    assert_eq!(x.matmul(&x).kind(), Kind::Float);
}

#[test]
fn thirty_two_true_changes_nothing_and_bf16_true_keeps_bfloat16_weights() {
    let _serial = serial();
    let (seen, weight, states, f32_loss) = fit(Precision::F32);
    assert!(seen.iter().all(|(_, k)| *k == Kind::Float), "{seen:?}");
    assert_eq!(weight, Kind::Float);
    assert!(states.iter().all(|k| *k == Kind::Float));
    let (seen, weight, states, bf16_loss) = fit(Precision::Bf16True);
    assert!(seen.iter().all(|(_, k)| *k == Kind::BFloat16), "{seen:?}");
    assert_eq!(weight, Kind::BFloat16);
    assert!(!states.is_empty() && states.iter().all(|k| *k == Kind::BFloat16), "{states:?}");
    // It learns, in less precise arithmetic (bfloat16 moments too, which makes this tiny
    // regression learn far more slowly than in float32): below the untrained loss.
    let dir = tempfile::tempdir().expect("tempdir");
    let untrained = Trainer::new(config(dir.path()))
        .expect("trainer")
        .validate(&mut Probe::new(), &PointsData { batch_size: 8 }, None)
        .expect("validate")["val_loss"];
    assert!(f32_loss < 0.8 * untrained && bf16_loss < untrained, "{untrained} -> {f32_loss} / {bf16_loss}");
}

#[test]
fn sixteen_mixed_is_refused_on_the_cpu_naming_the_alternative() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Trainer::new(TrainerConfig { precision: Precision::F16Mixed, ..config(dir.path()) })
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("16-mixed") && err.contains("CPU") && err.contains("bf16-mixed"), "{err}");
}

#[test]
fn lightnings_short_names_mean_what_they_mean_in_lightning() {
    let parse = |s: &str| serde_json::from_str::<Precision>(&format!("\"{s}\"")).expect(s);
    assert_eq!(parse("bf16"), Precision::Bf16Mixed);
    assert_eq!(parse("16"), Precision::F16Mixed);
    assert_eq!(parse("32"), Precision::F32);
    assert_eq!(parse("bf16-true"), Precision::Bf16True);
}
