//! LightningCLI for volt: `fit | validate | test | predict` with config files, dotted
//! overrides and `--print_config`, for the zoo's models and for a user's own types.
use crate::config::{self, CallbacksConfig, ConfigError, RunConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;
pub use volt_config::apply_optimizer;
use volt_train::{
    Callback, CallbackContext, CkptPath, DataModule, PredictionFile, PredictionRows, Trainer, VoltModule,
};

/// A model the command line can build from its `[model]` section.
pub trait CliModel: VoltModule<Prediction: PredictionRows> + Sized {
    /// The `[model]` section.
    type Config: Serialize + DeserializeOwned + Default + Clone;
    /// A fresh model on `device` (called after seeding).
    fn build(config: &Self::Config, device: tch::Device) -> volt_train::Result<Self>;

    /// Changes to Lightning's defaults that suit this model (its usual schedule, the
    /// checkpoints worth keeping); files and overrides still win.
    fn configure_defaults(_trainer: &mut volt_train::TrainerConfig, _callbacks: &mut CallbacksConfig) {}

    /// Writes what a finished fit leaves besides checkpoints (a LoRA adapter) into the
    /// run's `log_dir` (none when logging and checkpointing are off), on rank 0;
    /// returns lines to print.
    fn after_fit(&self, _log_dir: Option<&std::path::Path>) -> volt_train::Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Data the command line can build from its `[data]` section.
pub trait CliData: DataModule + Sized {
    /// The `[data]` section.
    type Config: Serialize + DeserializeOwned + Default + Clone;
    /// The data module.
    fn build(config: &Self::Config) -> volt_train::Result<Self>;

    /// Fills what the `[data]` section leaves to the model from the resolved `[model]`
    /// section (`model`, as JSON): the tokenizer of the model's file, as LitGPT's
    /// `data.connect(tokenizer)`.
    fn inherit(_config: &mut Self::Config, _model: &serde_json::Value) {}
}

/// Which loop to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subcommand {
    /// Train.
    Fit,
    /// Run the validation loop once.
    Validate,
    /// Run the test loop once.
    Test,
    /// Run predict_step over the predict loader.
    Predict,
}

impl Subcommand {
    /// `fit`, `validate`, `test` or `predict`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "fit" => Subcommand::Fit,
            "validate" => Subcommand::Validate,
            "test" => Subcommand::Test,
            "predict" => Subcommand::Predict,
            _ => return None,
        })
    }
}

/// What went wrong, with its exit code: 2 for usage and configuration, 1 for the run.
#[derive(Debug)]
pub enum CliError {
    /// Bad usage or configuration (exit 2); nothing was written.
    Usage(String),
    /// Failure while running (exit 1).
    Run(String),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Run(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Run(m) => f.write_str(m),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

/// The parsed arguments of one subcommand.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Invocation {
    /// `--config` files, in order.
    pub configs: Vec<PathBuf>,
    /// `--a.b value` overrides, in order.
    pub overrides: Vec<(String, String)>,
    /// `--print_config`.
    pub print_config: bool,
    /// `--ckpt_path`.
    pub ckpt_path: Option<String>,
    /// `--model`.
    pub model: Option<String>,
    /// `--help`.
    pub help: bool,
}

/// Usage of the training subcommands.
pub const USAGE: &str = "\
usage: volt <fit|validate|test|predict> [--model NAME] [--config FILE]... [--SECTION.KEY VALUE]...
                  [--seed N] [--ckpt_path last|best|PATH] [--print_config]

  --config FILE        TOML or YAML; repeatable, merged in order (later files win)
  --SECTION.KEY VALUE  override one key after the files, e.g. --trainer.max_epochs 20,
                       --model.hidden 512, --data.batch_size 64, --optimizer.lr 3e-4
  --seed N             seed of initialisation, shuffling and dropout
  --ckpt_path X        resume (fit) or load (validate, test, predict): last, best or a file
  --print_config       print the resolved configuration as TOML and exit
sections: seed, trainer, model, data, optimizer, lr_scheduler,
          callbacks.model_checkpoint, callbacks.early_stopping, callbacks.lr_monitor";

/// Parses the arguments after the subcommand.
pub fn parse_args(args: &[String]) -> Result<Invocation, ConfigError> {
    let mut inv = Invocation::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(ConfigError::Invalid(format!("unexpected argument `{arg}`\n{USAGE}")));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (flag, None),
        };
        let mut value = |inline: Option<String>| -> Result<String, ConfigError> {
            if let Some(v) = inline {
                return Ok(v);
            }
            i += 1;
            args.get(i).cloned().ok_or_else(|| ConfigError::Invalid(format!("`--{name}` needs a value")))
        };
        match name {
            "help" | "h" => inv.help = true,
            "print_config" | "print-config" => inv.print_config = true,
            "config" => inv.configs.push(PathBuf::from(value(inline)?)),
            "ckpt_path" | "ckpt-path" => inv.ckpt_path = Some(value(inline)?),
            "model" => inv.model = Some(value(inline)?),
            "seed" => {
                let v = value(inline)?;
                inv.overrides.push(("seed".into(), v));
            }
            key if key.contains('.') => {
                let v = value(inline)?;
                inv.overrides.push((key.to_owned(), v));
            }
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown option `--{other}`; overrides take a section, as in `--trainer.{other}`\n{USAGE}"
                )))
            }
        }
        i += 1;
    }
    Ok(inv)
}

/// Files, then overrides, resolved against the typed sections.
pub fn resolve_config<M: CliModel, D: CliData>(
    inv: &Invocation,
) -> Result<RunConfig<M::Config, D::Config>, ConfigError> {
    resolve_config_with::<M, D>(inv, M::Config::default())
}

/// [`resolve_config`] from `model` as the `[model]` section's defaults (one model type
/// under two names with different defaults: `smollm2` and `smollm2-lora`).
pub fn resolve_config_with<M: CliModel, D: CliData>(
    inv: &Invocation,
    model: M::Config,
) -> Result<RunConfig<M::Config, D::Config>, ConfigError> {
    let mut defaults = RunConfig::<M::Config, D::Config> { model, ..RunConfig::default() };
    M::configure_defaults(&mut defaults.trainer, &mut defaults.callbacks);
    let files = inv.configs.iter().map(|p| config::read_file(p)).collect::<Result<Vec<_>, _>>()?;
    let user_checkpoint = files.iter().any(|f| f.pointer("/callbacks/model_checkpoint").is_some())
        || inv.overrides.iter().any(|(k, _)| k.starts_with("callbacks.model_checkpoint"));
    let mut config = config::load(&defaults, files, &inv.overrides)?;
    // The model's own ModelCheckpoint gives way when checkpointing is off; one the user
    // configured is kept, and the Trainer refuses the combination, as Lightning does.
    if !config.trainer.enable_checkpointing && !user_checkpoint {
        config.callbacks.model_checkpoint = None;
    }
    let model = serde_json::to_value(&config.model).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    D::inherit(&mut config.data, &model);
    Ok(config)
}

/// Writes the resolved configuration to `<version_N>/config.toml` when fit starts.
struct SaveConfig {
    toml: String,
}

impl Callback for SaveConfig {
    fn name(&self) -> String {
        "SaveConfig".into()
    }
    fn on_fit_start(&mut self, ctx: &mut CallbackContext) -> volt_train::Result<()> {
        if let (Some(dir), true) = (ctx.log_dir, ctx.is_global_zero) {
            volt_train::checkpoint::write_atomic(&dir.join("config.toml"), self.toml.as_bytes())?;
        }
        Ok(())
    }
}

fn add_callbacks(mut trainer: Trainer, callbacks: &CallbacksConfig) -> Trainer {
    if let Some(c) = &callbacks.model_checkpoint {
        trainer = trainer.with_callback(c.clone());
    }
    if let Some(c) = &callbacks.early_stopping {
        trainer = trainer.with_callback(c.clone());
    }
    if let Some(c) = &callbacks.lr_monitor {
        trainer = trainer.with_callback(c.clone());
    }
    trainer
}

fn run_error(e: volt_train::Error) -> CliError {
    match e {
        volt_train::Error::Config(_)
        | volt_train::Error::Checkpoint { .. }
        | volt_train::Error::CheckpointMismatch { .. } => CliError::Usage(e.to_string()),
        other => CliError::Run(other.to_string()),
    }
}

/// How long ago this process was started (Linux: from /proc, 10 ms resolution), so that
/// start-up before `main` (loading libtorch) counts too.
fn process_age() -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22, counted after the parenthesised command name (which may hold spaces).
    let after = stat.rsplit_once(')')?.1;
    let start_ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 =
        std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    // Linux reports starttime in USER_HZ, which is 100 on every supported architecture.
    let age = uptime - start_ticks / 100.0;
    (age >= 0.0).then(|| std::time::Duration::from_secs_f64(age))
}

/// Runs one subcommand for model `M` and data `D`; prints what a user needs to see.
pub fn run_subcommand<M, D>(command: Subcommand, args: &[String]) -> Result<(), CliError>
where
    M: CliModel,
    D: CliData<Batch = M::Batch>,
{
    run_subcommand_with::<M, D>(command, args, M::Config::default())
}

/// [`run_subcommand`] with `model` as the `[model]` section's defaults.
pub fn run_subcommand_with<M, D>(
    command: Subcommand,
    args: &[String],
    model: M::Config,
) -> Result<(), CliError>
where
    M: CliModel,
    D: CliData<Batch = M::Batch>,
{
    let inv = parse_args(args)?;
    if inv.help {
        println!("{USAGE}");
        return Ok(());
    }
    let started = Instant::now();
    let mut config = resolve_config_with::<M, D>(&inv, model)?;
    config.validate()?;
    let toml = config::to_toml(&config)?;
    if inv.print_config {
        print!("{toml}");
        return Ok(());
    }
    let seed = config.seed.or(config.trainer.seed);
    config.trainer.seed = seed;
    if let Some(s) = seed {
        volt_train::seed_everything(s);
    }
    let trainer = Trainer::new(config.trainer.clone()).map_err(run_error)?;
    let model = M::build(&config.model, trainer.fabric().device()).map_err(run_error)?;
    let optimizer = apply_optimizer(model.configure_optimizers(), &config.optimizer, &config.lr_scheduler)?;
    let mut trainer = add_callbacks(trainer.with_optimizer_config(optimizer), &config.callbacks);
    let data = D::build(&config.data).map_err(run_error)?;
    let mut model = model;
    // Resolve the checkpoint before anything runs, so a bad path writes nothing; the loop
    // then gets the file itself (`last` with nothing found stays `last`: fit warns and
    // starts fresh, the evaluation loops refuse).
    let ckpt = match inv.ckpt_path.as_deref().map(CkptPath::from) {
        Some(c) => match trainer.resolve_ckpt_path(&c).map_err(run_error)? {
            Some(path) => Some(CkptPath::Path(path)),
            None if command == Subcommand::Fit => Some(c),
            None => {
                return Err(CliError::Usage(format!(
                    "--ckpt_path {}: no checkpoint under {}",
                    inv.ckpt_path.as_deref().unwrap_or_default(),
                    config.trainer.default_root_dir.join(&config.trainer.name).display()
                )))
            }
        },
        None => None,
    };
    match command {
        Subcommand::Fit => {
            trainer = trainer.with_callback(SaveConfig { toml });
            let out = trainer.fit(&mut model, &data, ckpt).map_err(run_error)?;
            if !trainer.fabric().is_global_zero() {
                return Ok(());
            }
            let wall = started.elapsed().as_secs_f64();
            println!("fit finished: {}", out.stop_reason);
            if let Some(best) = &out.best_checkpoint {
                println!("  best checkpoint: {}", best.display());
            }
            if let Some(last) = &out.last_checkpoint {
                println!("  last checkpoint: {}", last.display());
            }
            let monitor = config.callbacks.model_checkpoint.as_ref().and_then(|c| c.monitor.clone());
            let best =
                trainer.callbacks().iter().find_map(|c| c.state_dict().get("best_model_score")?.as_f64());
            if let (Some(m), Some(b)) = (monitor, best) {
                println!("  best {m}: {b:.4}");
            }
            for (k, v) in &out.metrics {
                if !k.ends_with("_step") {
                    println!("  {k}: {v:.4}");
                }
            }
            let rate = out.steps_this_run as f64 / out.train_time.as_secs_f64().max(1e-9);
            // Three decimals below 10 steps/s: an LLM's 0.364 is not "0.4".
            let rate = if rate < 10.0 { format!("{rate:.3}") } else { format!("{rate:.1}") };
            println!("  {} steps at {rate} steps/s; wall time {wall:.1} s", out.steps_this_run);
            if let (Some(at), Some(age)) = (out.first_step_at, process_age()) {
                let launch_to_first = age.saturating_sub(at.elapsed()).as_secs_f64();
                println!("  first optimizer step {launch_to_first:.2} s after launch");
            }
            for line in model.after_fit(out.log_dir.as_deref()).map_err(run_error)? {
                println!("  {line}");
            }
            if let Some(dir) = &out.log_dir {
                println!("  logs: {}", dir.display());
            }
            let comm = trainer.fabric().comm_stats();
            if trainer.fabric().world_size() > 1 && out.train_time.as_secs_f64() > 0.0 {
                println!(
                    "  ddp: {} ranks; {} collectives took {:.1}% of training time on rank 0",
                    trainer.fabric().world_size(),
                    comm.calls,
                    100.0 * comm.time.as_secs_f64() / out.train_time.as_secs_f64()
                );
            }
        }
        Subcommand::Validate | Subcommand::Test => {
            let metrics = if command == Subcommand::Validate {
                trainer.validate(&mut model, &data, ckpt)
            } else {
                trainer.test(&mut model, &data, ckpt)
            }
            .map_err(run_error)?;
            if trainer.fabric().is_global_zero() {
                for (k, v) in &metrics {
                    println!("{k}: {v:.4}");
                }
            }
        }
        Subcommand::Predict => {
            let dir = config.callbacks.prediction_writer.output_dir.clone().unwrap_or_else(|| {
                config.trainer.default_root_dir.join(&config.trainer.name).join("predictions")
            });
            let rank = trainer.fabric().rank();
            let mut file = PredictionFile::create(&dir, rank).map_err(run_error)?;
            trainer
                .predict_with(&mut model, &data, ckpt, |indices, p| file.write(indices, &p))
                .map_err(run_error)?;
            let (path, count) = file.finish().map_err(run_error)?;
            println!("rank {rank}: wrote {count} predictions to {}", path.display());
        }
    }
    Ok(())
}

/// The entry point for a user's crate: `volt::run::<MyModel, MyData>()` gives it the
/// `fit | validate | test | predict` command line, config files and overrides.
/// Returns the process exit code.
pub fn run<M, D>() -> std::process::ExitCode
where
    M: CliModel,
    D: CliData<Batch = M::Batch>,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().and_then(|a| Subcommand::parse(a)) {
        Some(command) => run_subcommand::<M, D>(command, &args[1..]),
        None => Err(CliError::Usage(USAGE.into())),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(e.exit_code())
        }
    }
}
