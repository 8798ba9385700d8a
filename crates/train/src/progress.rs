//! Where a run stands: the loop position that checkpoints store and resume from.
use serde::{Deserialize, Serialize};

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
