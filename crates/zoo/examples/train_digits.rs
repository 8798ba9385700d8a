//! The main job on the bundled data: train digits-mlp with the Trainer.
//!
//! cargo run --release -p volt-zoo --example train_digits [-- MAX_EPOCHS]
use volt_train::{Mode, ModelCheckpoint, Trainer, TrainerConfig};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let max_epochs = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| format!("MAX_EPOCHS must be a whole number, got {n:?}"))?,
        None => 30,
    };
    volt_train::seed_everything(0);
    let mut model = DigitsMlp::new(DigitsMlpConfig::default(), tch::Device::Cpu);
    let data = DigitsData::new(DigitsDataConfig::default())?;
    let mut trainer = Trainer::new(TrainerConfig {
        max_epochs: Some(max_epochs),
        default_root_dir: "runs".into(),
        seed: Some(0),
        ..TrainerConfig::default()
    })?
    .with_callback(ModelCheckpoint::top_k("val_acc", Mode::Max, 1));
    let out = trainer.fit(&mut model, &data, None)?;
    println!("stopped: {}", out.stop_reason);
    println!("val_acc: {:.4}", out.metrics.get("val_acc").copied().unwrap_or(f64::NAN));
    if let Some(dir) = &out.log_dir {
        println!("logs: {}", dir.display());
    }
    if let Some(best) = &out.best_checkpoint {
        println!("best checkpoint: {}", best.display());
    }
    if let Some(last) = &out.last_checkpoint {
        println!("last checkpoint: {}", last.display());
    }
    Ok(())
}
