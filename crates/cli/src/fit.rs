//! `volt fit`: train a zoo model with the Trainer.
use crate::{known_model, Failure};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;
use volt_train::{CkptPath, Mode, ModelCheckpoint, Trainer, TrainerConfig};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

/// Options of `volt fit`.
#[derive(Args)]
pub struct FitArgs {
    /// Zoo model to train (`volt models` lists them).
    #[arg(long)]
    model: String,
    /// Epochs to train.
    #[arg(long, default_value_t = 30)]
    max_epochs: usize,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Root of the `lightning_logs/version_N` folders.
    #[arg(long, default_value = "runs")]
    default_root_dir: PathBuf,
    /// Resume: `last`, `best` or a checkpoint file.
    #[arg(long)]
    ckpt_path: Option<String>,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Samples per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// libtorch threads.
    #[arg(long)]
    num_threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Trains and prints where the results are.
pub fn run(args: FitArgs) -> Result<(), Failure> {
    known_model(&args.model)?;
    let started = Instant::now();
    volt_train::seed_everything(args.seed);
    let config = TrainerConfig {
        max_epochs: Some(args.max_epochs),
        max_steps: args.max_steps,
        default_root_dir: args.default_root_dir,
        seed: Some(args.seed),
        num_threads: args.num_threads,
        enable_progress_bar: !args.quiet,
        ..TrainerConfig::default()
    };
    let mut trainer = Trainer::new(config)
        .map_err(|e| Failure::Usage(e.into()))?
        .with_callback(ModelCheckpoint::top_k("val_acc", Mode::Max, 1));
    let mut model = DigitsMlp::new(
        DigitsMlpConfig { lr: args.lr, ..DigitsMlpConfig::default() },
        trainer.fabric().device(),
    );
    let data = DigitsData::new(DigitsDataConfig {
        batch_size: args.batch_size,
        seed: args.seed,
        ..DigitsDataConfig::default()
    })
    .map_err(|e| Failure::Usage(e.into()))?;
    let ckpt = args.ckpt_path.as_deref().map(CkptPath::from);
    let out = trainer.fit(&mut model, &data, ckpt)?;
    let wall = started.elapsed().as_secs_f64();
    println!("fit finished: {}", out.stop_reason);
    if let Some(best) = &out.best_checkpoint {
        println!("  best checkpoint: {}", best.display());
    }
    if let Some(last) = &out.last_checkpoint {
        println!("  last checkpoint: {}", last.display());
    }
    for (k, v) in out.metrics.iter().filter(|(k, _)| k.starts_with("val_")) {
        println!("  {k}: {v:.4}");
    }
    let steps_per_s = out.steps_this_run as f64 / out.train_time.as_secs_f64().max(1e-9);
    println!("  {} steps at {steps_per_s:.1} steps/s; wall time {wall:.1} s", out.steps_this_run);
    if let Some(dir) = &out.log_dir {
        println!("  logs: {}", dir.display());
    }
    Ok(())
}
