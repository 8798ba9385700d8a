//! `volt`: train, evaluate and serve the zoo's models from the command line.
//!
//! Exit codes: 0 success, 2 usage or configuration error, 1 failure during the run.
mod fit;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "volt", version, about = "Train and serve neural networks on libtorch, Lightning-style")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a zoo model.
    Fit(fit::FitArgs),
    /// Serve a trained checkpoint over HTTP.
    Serve(serve::ServeArgs),
    /// List the zoo's models.
    Models,
}

/// An error with the exit code it deserves.
pub enum Failure {
    /// Bad usage or configuration (exit 2).
    Usage(anyhow::Error),
    /// Failure while running (exit 1).
    Run(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Run(e.into())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Fit(args) => fit::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Models => {
            for m in volt_zoo::MODELS {
                println!("{:<12} {} | {} | {}", m.name, m.task, m.dataset, m.defaults);
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Run(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Refuses a model name the zoo does not have, listing those it has.
pub fn known_model(name: &str) -> Result<(), Failure> {
    if volt_zoo::MODELS.iter().any(|m| m.name == name) {
        return Ok(());
    }
    let names: Vec<&str> = volt_zoo::MODELS.iter().map(|m| m.name).collect();
    Err(Failure::Usage(anyhow::anyhow!("unknown model \"{name}\"; the zoo has: {}", names.join(", "))))
}
