//! `metrics.csv` in PyTorch Lightning's CSVLogger layout: one row per `log_metrics` call,
//! a `step` column, one column per metric, columns sorted, blank cells for absent values.
use super::Logger;
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use volt_formats::metrics_csv;

/// Steps between writes of pending rows (Lightning's `flush_logs_every_n_steps`), so that
/// a long epoch shows its progress in the file before it ends.
pub const FLUSH_EVERY_N_STEPS: u64 = 100;

/// Appends metrics to `<dir>/metrics.csv`, rewriting the header when new metrics appear.
pub struct CsvLogger {
    path: PathBuf,
    keys: BTreeSet<String>,
    pending: Vec<Metrics>,
    flushed_at: u64,
}

impl CsvLogger {
    /// A logger writing `<dir>/metrics.csv`, continuing the file if it exists (resume).
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("metrics.csv");
        let keys = match std::fs::read(&path) {
            Ok(bytes) => metrics_csv::parse(&bytes).map_err(|e| csv_error(&path, e))?.0.into_iter().collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(CsvLogger { path, keys, pending: Vec::new(), flushed_at: 0 })
    }

    /// The file it writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the whole file again: the new header, the old rows, then `new_rows`.
    fn rewrite(&self, new_rows: &[Metrics]) -> Result<()> {
        let mut rows = match std::fs::read(&self.path) {
            Ok(bytes) => metrics_csv::parse(&bytes).map_err(|e| csv_error(&self.path, e))?.1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        rows.extend_from_slice(new_rows);
        let bytes = metrics_csv::write(&self.keys, &rows, true).map_err(|e| csv_error(&self.path, e))?;
        write_atomic(&self.path, &bytes)
    }
}

fn csv_error(path: &Path, e: volt_formats::FormatError) -> Error {
    Error::User(format!("{}: {e}", path.display()))
}

impl Logger for CsvLogger {
    fn log_metrics(&mut self, metrics: &Metrics, step: u64) -> Result<()> {
        let mut row = metrics.clone();
        row.insert("step".into(), step as f64);
        self.pending.push(row);
        if step >= self.flushed_at + FLUSH_EVERY_N_STEPS {
            self.flushed_at = step;
            return self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let before = self.keys.len();
        for row in &rows {
            self.keys.extend(row.keys().cloned());
        }
        if self.keys.len() != before || !self.path.exists() {
            return self.rewrite(&rows);
        }
        let bytes = metrics_csv::write(&self.keys, &rows, false).map_err(|e| csv_error(&self.path, e))?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, e))?;
        file.write_all(&bytes).map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_reach_the_file_every_hundred_steps_without_an_explicit_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut logger = CsvLogger::new(dir.path()).expect("logger");
        for step in 0..250u64 {
            let row: Metrics = [("train_loss".to_owned(), step as f64)].into_iter().collect();
            logger.log_metrics(&row, step).expect("log");
        }
        let text = std::fs::read_to_string(logger.path()).expect("metrics.csv written before any flush");
        let rows = text.lines().count() - 1;
        assert_eq!(rows, 201, "steps 0..=200 written at step 200, the rest pending:\n{text}");
        logger.flush().expect("flush");
        assert_eq!(std::fs::read_to_string(logger.path()).expect("read").lines().count() - 1, 250);
    }
}
