//! How training is spread over devices. Single device now; data-parallel plugs in here.
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

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

/// Which hardware to train on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// A GPU when libtorch sees one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU (error when none is visible).
    #[serde(alias = "gpu")]
    Cuda,
}

/// Which strategy, as in Lightning's `strategy` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Single device unless several are asked for.
    #[default]
    Auto,
    /// One process, one device.
    SingleDevice,
}

/// Picks the device for `accelerator`, refusing what this machine cannot do.
pub fn select_device(accelerator: Accelerator, devices: usize) -> Result<Device> {
    if devices != 1 {
        return Err(Error::Config(format!(
            "trainer.devices = {devices}: this build trains on one device per process; \
             data-parallel training (strategy \"ddp\") is not available yet"
        )));
    }
    match accelerator {
        Accelerator::Cpu => Ok(Device::Cpu),
        Accelerator::Auto => Ok(Device::cuda_if_available()),
        Accelerator::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        Accelerator::Cuda => Err(Error::Config(
            "trainer.accelerator = \"cuda\" but libtorch sees no GPU; use \"cpu\" or \"auto\"".into(),
        )),
    }
}
