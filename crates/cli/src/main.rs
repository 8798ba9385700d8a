//! `volt`: train, evaluate and serve the zoo's models from the command line.
//!
//! Exit codes: 0 success, 2 usage or configuration error, 1 failure during the run.
mod job;
mod lora;
mod serve;
mod studio;

use clap::{Parser, Subcommand as ClapSubcommand};
use std::process::ExitCode;
use volt::{parse_args, run_zoo_model, CliError, Subcommand};

#[derive(Parser)]
#[command(name = "volt", version, about = "Train and serve neural networks on libtorch, Lightning-style")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Arguments of the training subcommands, parsed by volt's config loader (see `volt fit --help`).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
struct LoopArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<String>,
}

#[derive(ClapSubcommand)]
enum Command {
    /// Train a zoo model: --model NAME [--config FILE]... [--SECTION.KEY VALUE]... [--ckpt_path X]
    Fit(LoopArgs),
    /// Run the validation loop of a checkpoint.
    Validate(LoopArgs),
    /// Run the test loop of a checkpoint.
    Test(LoopArgs),
    /// Run predict_step of a checkpoint over the predict data.
    Predict(LoopArgs),
    /// Serve a model over HTTP: a trained checkpoint, a pretrained model, a GGUF file.
    Serve(Box<serve::ServeArgs>),
    /// List the zoo's models.
    Models,
    /// Run a command on nodes of a backend, watched and restarted by the control plane.
    Job {
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// LoRA adapters: `merge` folds one into its base as a Hugging Face model folder.
    Lora {
        #[command(subcommand)]
        command: lora::LoraCommand,
    },
    /// The control plane that runs jobs.
    Studio {
        #[command(subcommand)]
        command: studio::StudioCommand,
    },
}

fn run_loop(command: Subcommand, args: &[String]) -> Result<(), CliError> {
    let inv = parse_args(args).map_err(CliError::from)?;
    if inv.help {
        println!("{}", volt::USAGE);
        return Ok(());
    }
    let name = inv.model.ok_or_else(|| {
        CliError::Usage(format!("--model is required (`volt models` lists them)\n{}", volt::USAGE))
    })?;
    run_zoo_model(&name, command, args)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Fit(a) => run_loop(Subcommand::Fit, &a.args),
        Command::Validate(a) => run_loop(Subcommand::Validate, &a.args),
        Command::Test(a) => run_loop(Subcommand::Test, &a.args),
        Command::Predict(a) => run_loop(Subcommand::Predict, &a.args),
        Command::Serve(args) => serve::run(*args),
        Command::Job { command } => job::run(command),
        Command::Lora { command } => lora::run(command),
        Command::Studio { command } => studio::run(command),
        Command::Models => {
            for m in volt_zoo::MODELS {
                println!("{:<12} {} | {} | {}", m.name, m.task, m.dataset, m.defaults);
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
