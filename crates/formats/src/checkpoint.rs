//! The checkpoint file: one `.safetensors` file whose header metadata holds the
//! trainer's state as JSON under the `volt` key, next to the model and optimizer tensors.
use crate::{FormatError, Metrics};
use safetensors::tensor::{SafeTensors, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use volt_config::SchedulerState;

/// Version of the checkpoint layout, bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;
/// Header metadata key that holds [`TrainingState`] as JSON.
pub const METADATA_KEY: &str = "volt";
/// Prefix of model tensors in a checkpoint.
pub const MODEL_PREFIX: &str = "model.";
/// Prefix of optimizer state tensors in a checkpoint.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// File name of the most recent checkpoint in a run's `checkpoints/` folder.
pub const LAST_NAME: &str = "last.safetensors";
/// safetensors caps headers at 100 MB; a larger length means a corrupt file.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The loop position after the last completed optimizer step.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch in progress (or the next one, when `batch_in_epoch` is 0), from 0.
    pub epoch: usize,
    /// Optimizer steps taken since the start of training.
    pub global_step: u64,
    /// Batches of `epoch` already consumed; a resume continues with the next one.
    pub batch_in_epoch: usize,
}

/// The optimizer's scalar state, stored as JSON in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerScalars {
    /// Steps taken.
    pub step: u64,
    /// Current learning rate.
    pub lr: f64,
    /// PyTorch's class name, to refuse restoring into another optimizer.
    pub class: String,
    /// `16-mixed`'s gradient scaler, when the run has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_scaler: Option<GradScalerState>,
}

/// A gradient scaler's state (PyTorch's `GradScaler.state_dict()`: `scale`, `_growth_tracker`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScalerState {
    /// What the loss is multiplied by.
    pub scale: f64,
    /// Clean steps in a row since the scale last moved.
    pub growth_tracker: u64,
}

/// Everything but the tensors: where the run stands and what made it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// The volt version that wrote the file.
    pub volt_version: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// Loop position to resume from.
    pub progress: Progress,
    /// Optimizer step count and learning rate.
    pub optimizer: Option<OptimizerScalars>,
    /// Learning-rate scheduler state.
    pub scheduler: Option<SchedulerState>,
    /// State of each callback, by callback name.
    pub callbacks: BTreeMap<String, Value>,
    /// The run's seed.
    pub seed: Option<u64>,
    /// The module's hyperparameters.
    pub hparams: Value,
    /// What the module's `on_save_checkpoint` returned.
    pub module: Value,
    /// The latest metrics when the checkpoint was written.
    pub metrics: Metrics,
}

/// A whole checkpoint file's trainer state and its tensors (views into the bytes).
pub fn parse(bytes: &[u8]) -> Result<(TrainingState, SafeTensors<'_>), FormatError> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(unreadable)?;
    let state =
        parse_state(header.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)).map(String::as_str))?;
    let tensors = SafeTensors::deserialize(bytes).map_err(unreadable)?;
    Ok((state, tensors))
}

/// The trainer state from the start of a checkpoint file, reading only its header.
pub fn read_state(reader: &mut impl Read) -> Result<TrainingState, FormatError> {
    let io = |e: std::io::Error| FormatError::new(format!("cannot read: {e}"));
    let mut len = [0u8; 8];
    reader.read_exact(&mut len).map_err(io)?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(FormatError::new("not a readable safetensors file (header too large)"));
    }
    let mut header = Vec::new();
    reader.take(len).read_to_end(&mut header).map_err(io)?;
    if header.len() as u64 != len {
        return Err(FormatError::new("not a readable safetensors file (truncated header)"));
    }
    let header: Value = serde_json::from_slice(&header)
        .map_err(|e| FormatError::new(format!("not a readable safetensors file ({e})")))?;
    parse_state(header.get("__metadata__").and_then(|m| m.get(METADATA_KEY)).and_then(Value::as_str))
}

/// The file's bytes for `tensors` (sorted by name by the caller) and `state`.
pub fn serialize<V: View>(tensors: Vec<(&str, V)>, state: &TrainingState) -> Result<Vec<u8>, FormatError> {
    // JSON has no NaN or infinity; such metric values are left out.
    let mut state = state.clone();
    state.metrics.retain(|_, v| v.is_finite());
    let json =
        serde_json::to_string(&state).map_err(|e| FormatError::new(format!("cannot encode state: {e}")))?;
    let metadata = HashMap::from([(METADATA_KEY.to_owned(), json), ("format".to_owned(), "pt".to_owned())]);
    safetensors::tensor::serialize(tensors, Some(metadata))
        .map_err(|e| FormatError::new(format!("cannot encode: {e}")))
}

fn unreadable(e: safetensors::SafeTensorError) -> FormatError {
    FormatError::new(format!("not a readable safetensors file ({e:?})"))
}

/// The trainer state stored under the `volt` metadata key.
fn parse_state(json: Option<&str>) -> Result<TrainingState, FormatError> {
    let json =
        json.ok_or_else(|| FormatError::new("not a volt checkpoint (no `volt` entry in its metadata)"))?;
    serde_json::from_str(json).map_err(|e| FormatError::new(format!("unreadable trainer state: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_without_tensors_reads_back() {
        // A module without parameters still checkpoints its trainer state.
        let state =
            TrainingState { volt_version: "x".into(), format: FORMAT_VERSION, ..TrainingState::default() };
        let bytes =
            serialize(Vec::<(&str, safetensors::tensor::TensorView<'_>)>::new(), &state).expect("write");
        let (read, tensors) = parse(&bytes).expect("read");
        assert_eq!(read, state);
        assert!(tensors.tensors().is_empty());
        assert_eq!(read_state(&mut &bytes[..]).expect("header"), state);
    }

    #[test]
    fn metrics_read_back_to_the_bit() {
        // Found by fuzzing: a value that JSON's fast float parsing reads back one ulp off (0.9583333333373333 here).
        let state = TrainingState {
            metrics: [("val_acc".to_owned(), 0.9583333333373333)].into(),
            ..TrainingState::default()
        };
        let bytes =
            serialize(Vec::<(&str, safetensors::tensor::TensorView<'_>)>::new(), &state).expect("write");
        let read = read_state(&mut &bytes[..]).expect("read");
        assert_eq!(read.metrics["val_acc"].to_bits(), 0.9583333333373333f64.to_bits());
    }
}
