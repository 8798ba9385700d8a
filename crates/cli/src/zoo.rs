//! The zoo's models on the command line.
use crate::config::CallbacksConfig;
use crate::run::{run_subcommand, run_subcommand_with, CliData, CliError, CliModel, Subcommand};
use volt_train::{BatchLimit, Mode, ModelCheckpoint, TrainerConfig};
use volt_zoo::shakespeare::Vocab;
use volt_zoo::{
    CharGpt, CharGptConfig, DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig, InstructData,
    InstructDataConfig, ShakespeareData, ShakespeareDataConfig, SmolLm2, SmolLm2Config,
};

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

impl CliModel for CharGpt {
    type Config = CharGptConfig;
    fn build(config: &CharGptConfig, device: tch::Device) -> volt_train::Result<Self> {
        CharGpt::new(config.clone(), Vocab::shakespeare(), device).map_err(volt_train::Error::Config)
    }

    /// nanoGPT's schedule: 2,000 steps, validation on 200 batches every 250 steps,
    /// keeping the checkpoint with the lowest validation loss.
    fn configure_defaults(trainer: &mut TrainerConfig, callbacks: &mut CallbacksConfig) {
        trainer.max_steps = Some(2000);
        trainer.val_check_interval = BatchLimit::Count(250);
        trainer.limit_val_batches = BatchLimit::Count(200);
        trainer.log_every_n_steps = 10;
        trainer.gradient_clip_val = Some(1.0);
        trainer.default_root_dir = "runs".into();
        trainer.name = "char-gpt".into();
        callbacks.model_checkpoint = Some(ModelCheckpoint {
            filename: Some("{step}-{val_loss:.4f}".into()),
            ..ModelCheckpoint::top_k("val_loss", Mode::Min, 1)
        });
    }
}

impl CliData for ShakespeareData {
    type Config = ShakespeareDataConfig;
    fn build(config: &ShakespeareDataConfig) -> volt_train::Result<Self> {
        ShakespeareData::new(config.clone())
    }
}

impl CliModel for SmolLm2 {
    type Config = SmolLm2Config;
    fn build(config: &SmolLm2Config, device: tch::Device) -> volt_train::Result<Self> {
        SmolLm2::new(config.clone(), device).map_err(volt_train::Error::Config)
    }

    /// LitGPT's fine-tuning loop on CPU scale: validation every 50 steps on at most 20
    /// batches, gradients clipped at 1.0, the checkpoint with the lowest validation loss.
    fn configure_defaults(trainer: &mut TrainerConfig, callbacks: &mut CallbacksConfig) {
        trainer.max_steps = Some(100);
        trainer.val_check_interval = BatchLimit::Count(50);
        trainer.check_val_every_n_epoch = None;
        trainer.limit_val_batches = BatchLimit::Count(20);
        trainer.log_every_n_steps = 5;
        trainer.gradient_clip_val = Some(1.0);
        trainer.default_root_dir = "runs".into();
        trainer.name = "smollm2".into();
        callbacks.model_checkpoint = Some(ModelCheckpoint {
            filename: Some("{step}-{val_loss:.4f}".into()),
            ..ModelCheckpoint::top_k("val_loss", Mode::Min, 1)
        });
    }

    /// A LoRA run's adapter, as PEFT's files in `<version>/adapter`.
    fn after_fit(&self, log_dir: Option<&std::path::Path>) -> volt_train::Result<Vec<String>> {
        if self.lora().is_none() {
            return Ok(Vec::new());
        }
        let Some(log_dir) = log_dir else {
            return Ok(vec![
                "adapter not written: the run has no version folder (loggers and checkpointing are off)"
                    .into(),
            ]);
        };
        let dir = log_dir.join("adapter");
        self.save_adapter(&dir)?;
        Ok(vec![format!("adapter (PEFT): {}", dir.display())])
    }
}

impl CliData for InstructData {
    type Config = InstructDataConfig;
    fn build(config: &InstructDataConfig) -> volt_train::Result<Self> {
        InstructData::new(config.clone()).map_err(volt_train::Error::Config)
    }
    fn inherit(config: &mut InstructDataConfig, model: &serde_json::Value) {
        if config.tokenizer.is_none() {
            config.tokenizer = model.get("gguf").and_then(|g| g.as_str()).map(Into::into);
        }
    }
}

/// Runs `command` for the zoo model `name`.
pub fn run_zoo_model(name: &str, command: Subcommand, args: &[String]) -> Result<(), CliError> {
    match name {
        "digits-mlp" => run_subcommand::<DigitsMlp, DigitsData>(command, args),
        "char-gpt" => run_subcommand::<CharGpt, ShakespeareData>(command, args),
        "smollm2" => run_subcommand_with::<SmolLm2, InstructData>(command, args, SmolLm2Config::full()),
        "smollm2-lora" => run_subcommand_with::<SmolLm2, InstructData>(command, args, SmolLm2Config::lora()),
        other => Err(unknown_model(other)),
    }
}

/// The error for a model name the zoo does not have, listing those it has.
pub fn unknown_model(name: &str) -> CliError {
    let names: Vec<&str> = volt_zoo::MODELS.iter().map(|m| m.name).collect();
    CliError::Usage(format!("unknown model \"{name}\"; the zoo has: {}", names.join(", ")))
}
