//! Predictions on disk: JSON Lines, one file per rank (`predictions-rank{R}.jsonl`), each
//! line `{"index": I, "prediction": P}` with `I` the sample's index in the predict set,
//! so that the shards of a data-parallel run can be put back in order. Lightning leaves
//! the format to a `BasePredictionWriter` subclass; this is volt's built-in one.
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// A batch's prediction as one JSON value per sample.
pub trait PredictionRows {
    /// One value per sample of the batch, in the batch's order.
    fn rows(&self) -> Result<Vec<Value>>;
}

impl PredictionRows for Tensor {
    /// Each slice along the first dimension, as nested lists of numbers (a 0-d tensor is
    /// one row).
    fn rows(&self) -> Result<Vec<Value>> {
        let t = self.f_to_device(tch::Device::Cpu)?;
        if t.dim() == 0 {
            return Ok(vec![tensor_value(&t)?]);
        }
        (0..t.size()[0]).map(|i| tensor_value(&t.f_get(i)?)).collect()
    }
}

impl PredictionRows for String {
    fn rows(&self) -> Result<Vec<Value>> {
        Ok(vec![Value::String(self.clone())])
    }
}

impl<T: serde::Serialize> PredictionRows for Vec<T> {
    fn rows(&self) -> Result<Vec<Value>> {
        self.iter()
            .map(|v| serde_json::to_value(v).map_err(|e| Error::User(format!("prediction: {e}"))))
            .collect()
    }
}

/// A tensor as nested JSON lists: integers stay integers, booleans booleans.
fn tensor_value(t: &Tensor) -> Result<Value> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let flat = t.f_flatten(0, -1)?;
    let leaves: Vec<Value> = match t.kind() {
        Kind::Bool => Vec::<bool>::try_from(&flat)?.into_iter().map(Value::from).collect(),
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64 => {
            Vec::<i64>::try_from(&flat.f_to_kind(Kind::Int64)?)?.into_iter().map(Value::from).collect()
        }
        _ => Vec::<f64>::try_from(&flat.f_to_kind(Kind::Double)?)?
            .into_iter()
            .map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number))
            .collect(),
    };
    Ok(nest(&shape, &mut leaves.into_iter()))
}

fn nest(shape: &[usize], leaves: &mut impl Iterator<Item = Value>) -> Value {
    match shape.split_first() {
        None => leaves.next().unwrap_or(Value::Null),
        Some((&n, rest)) => Value::Array((0..n).map(|_| nest(rest, leaves)).collect()),
    }
}

/// One rank's prediction file, written to a temporary file and renamed when finished,
/// so a failed or interrupted run never leaves a partial file under the final name.
pub struct PredictionFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    count: usize,
}

impl PredictionFile {
    /// Starts `<output_dir>/predictions-rank<rank>.jsonl`.
    pub fn create(output_dir: &Path, rank: usize) -> Result<Self> {
        std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
        let path = output_dir.join(format!("predictions-rank{rank}.jsonl"));
        let tmp = output_dir.join(format!(".predictions-rank{rank}.jsonl.{}.tmp", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(PredictionFile { path, tmp, out: Some(BufWriter::new(file)), count: 0 })
    }

    /// Writes one batch: a line per sample, its dataset index first.
    pub fn write(&mut self, indices: &[usize], prediction: &impl PredictionRows) -> Result<()> {
        let rows = prediction.rows()?;
        if rows.len() != indices.len() {
            return Err(Error::User(format!(
                "predict_step returned {} rows for a batch of {} samples",
                rows.len(),
                indices.len()
            )));
        }
        let out = self.out.as_mut().ok_or_else(|| Error::User("prediction file already finished".into()))?;
        for (index, row) in indices.iter().zip(rows) {
            let line = json!({"index": index, "prediction": row});
            writeln!(out, "{line}").map_err(|e| Error::io(&self.tmp, e))?;
        }
        self.count += indices.len();
        Ok(())
    }

    /// Flushes, syncs and renames the file into place; returns its path and line count.
    pub fn finish(mut self) -> Result<(PathBuf, usize)> {
        if let Some(out) = self.out.take() {
            let file = out.into_inner().map_err(|e| Error::io(&self.tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&self.tmp);
            Error::io(&self.path, e)
        })?;
        Ok((self.path.clone(), self.count))
    }
}

impl Drop for PredictionFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_become_one_row_per_sample_with_their_kinds() {
        let floats = Tensor::from_slice(&[0.5f32, 1.5, 2.5, 3.5]).view([2, 2]);
        assert_eq!(floats.rows().expect("rows"), vec![json!([0.5, 1.5]), json!([2.5, 3.5])]);
        let labels = Tensor::from_slice(&[3i64, 7]);
        assert_eq!(labels.rows().expect("rows"), vec![json!(3), json!(7)]);
        assert_eq!(Tensor::from(2.0f64).rows().expect("rows"), vec![json!(2.0)]);
        let cube = Tensor::arange(8, (Kind::Int, tch::Device::Cpu)).view([2, 2, 2]);
        assert_eq!(cube.rows().expect("rows")[1], json!([[4, 5], [6, 7]]));
    }

    #[test]
    fn a_batch_whose_rows_do_not_match_its_samples_is_refused_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = PredictionFile::create(dir.path(), 0).expect("create");
        let e = file.write(&[0, 1, 2], &Tensor::zeros([2, 4], (Kind::Float, tch::Device::Cpu))).unwrap_err();
        assert!(e.to_string().contains("2 rows for a batch of 3"), "{e}");
        drop(file);
        assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "the temporary file is gone");
    }
}
