//! The TensorBoard logger: scalars into an event file (the format is volt-formats').
use super::Logger;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use volt_formats::tensorboard;
pub use volt_formats::tensorboard::Scalar;

/// Writes scalars to `<dir>/events.out.tfevents.<time>.<host>.<pid>.0`.
pub struct TensorBoardLogger {
    path: PathBuf,
    out: BufWriter<File>,
}

impl TensorBoardLogger {
    /// A new event file in `dir` (a resumed run adds a file; TensorBoard merges them).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut n = 0;
        let path = loop {
            let p = dir.join(format!("events.out.tfevents.{now}.{host}.{}.{n}", std::process::id()));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut logger = TensorBoardLogger { path, out: BufWriter::new(file) };
        logger.write_record(&tensorboard::file_version_event(wall_time()))?;
        Ok(logger)
    }

    /// The event file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_record(&mut self, payload: &[u8]) -> Result<()> {
        self.out.write_all(&tensorboard::record(payload)).map_err(|e| Error::io(&self.path, e))
    }
}

impl Logger for TensorBoardLogger {
    fn log_metrics(&mut self, metrics: &Metrics, step: u64) -> Result<()> {
        let scalars = metrics
            .iter()
            .filter(|(tag, _)| tag.as_str() != "epoch")
            .map(|(tag, v)| (tag.as_str(), *v as f32));
        self.write_record(&tensorboard::scalars_event(wall_time(), step, scalars))
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for TensorBoardLogger {
    fn drop(&mut self) {
        let _ = self.out.flush();
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Reads every scalar of an event file, checking each record's CRCs.
pub fn read_scalars(path: &Path) -> Result<Vec<Scalar>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    tensorboard::read_scalars(&data).map_err(|e| Error::User(format!("{}: {e}", path.display())))
}
