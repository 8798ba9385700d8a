//! How training is spread over devices: one device ([`SingleDevice`]) or one process
//! per device ([`crate::ddp::Ddp`]).
use crate::error::{Error, Result};

use std::time::Duration;
use tch::{nn, Device, Tensor};

/// Time spent in collectives (for the all-reduce share of step time).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    /// Collectives run.
    pub calls: u64,
    /// Wall time spent in them.
    pub time: Duration,
}

/// A reduction across ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum of every rank's tensor.
    Sum,
    /// Mean of every rank's tensor.
    Mean,
    /// Element-wise maximum.
    Max,
    /// Element-wise minimum.
    Min,
}

/// Where the model lives and how ranks cooperate; the Trainer's loops only talk to this.
pub trait Strategy: Send {
    /// The strategy's name, as in the `strategy` option.
    fn name(&self) -> &'static str;
    /// The device this rank computes on.
    fn root_device(&self) -> Device;
    /// This process's global rank.
    fn rank(&self) -> usize {
        0
    }
    /// Number of ranks.
    fn world_size(&self) -> usize {
        1
    }
    /// This process's rank on its node.
    fn local_rank(&self) -> usize {
        0
    }
    /// This node's index.
    fn node_rank(&self) -> usize {
        0
    }
    /// Whether this rank writes logs and checkpoints.
    fn is_global_zero(&self) -> bool {
        self.rank() == 0
    }
    /// Moves the model to this rank's device (and makes ranks agree on its weights).
    fn setup_module(&mut self, vs: &nn::VarStore) -> Result<()> {
        move_to_device(vs, self.root_device())
    }
    /// Averages gradients across ranks after backward.
    fn reduce_gradients(&mut self, _grads: &[Tensor]) -> Result<()> {
        Ok(())
    }
    /// Reduces `t` across ranks.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let _ = op;
        Ok(t.shallow_clone())
    }
    /// Every rank's `t`, in rank order.
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![t.shallow_clone()])
    }
    /// Rank `src`'s `t`, on every rank.
    fn broadcast(&self, t: &Tensor, src: usize) -> Result<Tensor> {
        let _ = src;
        Ok(t.shallow_clone())
    }
    /// Waits until every rank gets here.
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    /// Asks every rank to stop; agreed on at the next gradient reduction.
    fn request_stop(&mut self) {}
    /// Whether some rank asked to stop, as seen by every rank at the same step.
    fn stop_agreed(&self) -> bool {
        false
    }
    /// Time spent in collectives so far.
    fn comm_stats(&self) -> CommStats {
        CommStats::default()
    }
}

/// Moves every variable of `vs` to `device` in place, keeping the tensors that
/// modules hold pointing at the moved data.
pub fn move_to_device(vs: &nn::VarStore, device: Device) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (_, mut t) in vs.variables() {
            if t.device() != device {
                let moved = t.f_to_device(device)?;
                t.f_set_data(&moved)?;
            }
        }
        Ok(())
    })
}

/// One process, one device.
pub struct SingleDevice {
    device: Device,
}

impl SingleDevice {
    /// Training on `device`.
    pub fn new(device: Device) -> Self {
        SingleDevice { device }
    }
}

impl Strategy for SingleDevice {
    fn name(&self) -> &'static str {
        "single_device"
    }
    fn root_device(&self) -> Device {
        self.device
    }
}

pub use volt_config::trainer::{Accelerator, StrategyKind};

/// Picks the device of a single-device run, refusing what this machine cannot do.
pub fn select_device(accelerator: Accelerator) -> Result<Device> {
    match accelerator {
        Accelerator::Cpu => Ok(Device::Cpu),
        Accelerator::Auto => Ok(Device::cuda_if_available()),
        Accelerator::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        Accelerator::Cuda => Err(Error::Config(
            "trainer.accelerator = \"cuda\" but libtorch sees no GPU; use \"cpu\" or \"auto\"".into(),
        )),
    }
}
