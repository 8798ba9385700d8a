//! The zoo's models on the command line.
use crate::config::CallbacksConfig;
use crate::run::{run_subcommand, CliData, CliError, CliModel, Subcommand};
use volt_train::{Mode, ModelCheckpoint, TrainerConfig};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

impl CliModel for DigitsMlp {
    type Config = DigitsMlpConfig;
    fn build(config: &DigitsMlpConfig, device: tch::Device) -> volt_train::Result<Self> {
        Ok(DigitsMlp::new(config.clone(), device))
    }

    /// 30 epochs into `runs/`, keeping the checkpoint with the best validation accuracy.
    fn configure_defaults(trainer: &mut TrainerConfig, callbacks: &mut CallbacksConfig) {
        trainer.max_epochs = Some(30);
        trainer.default_root_dir = "runs".into();
        callbacks.model_checkpoint = Some(ModelCheckpoint {
            filename: Some("{epoch}-{val_acc:.4f}".into()),
            ..ModelCheckpoint::top_k("val_acc", Mode::Max, 1)
        });
    }
}

impl CliData for DigitsData {
    type Config = DigitsDataConfig;
    fn build(config: &DigitsDataConfig) -> volt_train::Result<Self> {
        DigitsData::new(config.clone())
    }
}

/// Runs `command` for the zoo model `name`.
pub fn run_zoo_model(name: &str, command: Subcommand, args: &[String]) -> Result<(), CliError> {
    match name {
        "digits-mlp" => run_subcommand::<DigitsMlp, DigitsData>(command, args),
        other => Err(unknown_model(other)),
    }
}

/// The error for a model name the zoo does not have, listing those it has.
pub fn unknown_model(name: &str) -> CliError {
    let names: Vec<&str> = volt_zoo::MODELS.iter().map(|m| m.name).collect();
    CliError::Usage(format!("unknown model \"{name}\"; the zoo has: {}", names.join(", ")))
}
