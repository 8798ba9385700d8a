//! `volt lora merge`: a base model and a LoRA adapter (PEFT's files, as a LoRA fit writes
//! them) into one Hugging Face model folder that transformers, LitGPT and PEFT load.
use std::path::PathBuf;
use volt::CliError;
use volt_zoo::smollm2::{hf, SmolLm2, SmolLm2Config};

/// What `volt lora` does.
#[derive(clap::Subcommand)]
pub enum LoraCommand {
    /// Base + adapter -> a Hugging Face model folder (merged weights, config, tokenizer).
    Merge(MergeArgs),
}

/// Arguments of `volt lora merge`.
#[derive(clap::Args)]
pub struct MergeArgs {
    /// The adapter folder (a LoRA fit's `<version>/adapter`); without it, the base alone.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The base's GGUF file (default: the bundled SmolLM2-135M-Instruct).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// The folder to create.
    #[arg(long)]
    out: PathBuf,
}

/// Runs a `volt lora` command.
pub fn run(command: LoraCommand) -> Result<(), CliError> {
    let LoraCommand::Merge(args) = command;
    if args.out.exists() {
        return Err(CliError::Usage(format!("--out {}: exists; give a new folder", args.out.display())));
    }
    let device = tch::Device::Cpu;
    let model = match &args.adapter {
        Some(dir) => SmolLm2::from_adapter(dir, args.gguf.as_deref(), device),
        None => SmolLm2::new(SmolLm2Config { gguf: args.gguf.clone(), ..SmolLm2Config::full() }, device),
    }
    .map_err(CliError::Usage)?;
    hf::write_model_folder(&model, &args.out).map_err(CliError::Run)?;
    let what = args
        .adapter
        .as_ref()
        .map_or_else(|| "the base".to_owned(), |a| format!("the base + {}", a.display()));
    println!("wrote {} ({}): {}", args.out.display(), what, hf::FILES.join(", "));
    Ok(())
}
