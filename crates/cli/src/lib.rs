//! The volt command line as a library: LightningCLI-style `fit | validate | test |
//! predict` for the zoo's models, and [`run`] for a user's own model and data types.
#![warn(missing_docs)]

pub mod config;
mod run;
mod zoo;

pub use run::{
    apply_optimizer, parse_args, resolve_config, resolve_config_with, run, run_subcommand,
    run_subcommand_with, CliData, CliError, CliModel, Invocation, Subcommand, USAGE,
};
pub use zoo::{run_zoo_model, unknown_model};
