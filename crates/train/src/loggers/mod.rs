//! Experiment loggers writing into a run's `<root>/<name>/version_N/` folder.
mod csv_logger;
mod tensorboard;

pub use csv_logger::CsvLogger;
pub use tensorboard::{read_scalars, TensorBoardLogger};

use crate::checkpoint::{parse_version, write_atomic};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Receives metrics as training goes.
pub trait Logger: Send {
    /// Records one row of metrics at `step`.
    fn log_metrics(&mut self, metrics: &Metrics, step: u64) -> Result<()>;
    /// Writes buffered rows to disk.
    fn flush(&mut self) -> Result<()>;
}

pub use volt_config::trainer::LoggerKind;

/// A logger of `kind` writing into `dir`.
pub fn create(kind: LoggerKind, dir: &Path) -> Result<Box<dyn Logger>> {
    Ok(match kind {
        LoggerKind::Csv => Box::new(CsvLogger::new(dir)?),
        LoggerKind::TensorBoard => Box::new(TensorBoardLogger::new(dir)?),
    })
}

/// `<root>/<name>/version_N` for the next free N (the first run gets `version_0`).
pub fn next_version_dir(experiment_dir: &Path) -> PathBuf {
    let next = std::fs::read_dir(experiment_dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| parse_version(&e.file_name().to_string_lossy()))
                .map(|v| v + 1)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    experiment_dir.join(format!("version_{next}"))
}

/// Writes `hparams.yaml` in `dir`, as Lightning's loggers do.
pub fn save_hparams(dir: &Path, hparams: &Value) -> Result<()> {
    let path = dir.join("hparams.yaml");
    let value = if hparams.is_null() { Value::Object(Default::default()) } else { hparams.clone() };
    let yaml = serde_norway::to_string(&value)
        .map_err(|e| Error::User(format!("cannot write {}: {e}", path.display())))?;
    write_atomic(&path, yaml.as_bytes())
}
