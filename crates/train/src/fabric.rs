//! Fabric: devices, seeding, backward, clipping, collectives and checkpoints for users
//! who write their own loop. The Trainer is built on it.
use crate::checkpoint::{self, Checkpoint};
use crate::data::{Batch, DataLoader};
use crate::error::{Error, Result};
use crate::optim::{clip_gradients, ClipAlgorithm, Optimizer, OptimizerSpec};
use crate::strategy::{select_device, Accelerator, ReduceOp, SingleDevice, Strategy, StrategyKind};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Device, Tensor};

/// Numeric precision of training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// Float32 weights and math.
    #[default]
    #[serde(rename = "32-true", alias = "32")]
    F32,
}

/// How Fabric (and so the Trainer) places and runs the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FabricConfig {
    /// cpu, cuda or auto.
    pub accelerator: Accelerator,
    /// Devices per process.
    pub devices: usize,
    /// How devices cooperate.
    pub strategy: StrategyKind,
    /// Numeric precision.
    pub precision: Precision,
    /// libtorch intra-op threads (default: libtorch's choice).
    pub num_threads: Option<usize>,
}

impl Default for FabricConfig {
    fn default() -> Self {
        FabricConfig {
            accelerator: Accelerator::Auto,
            devices: 1,
            strategy: StrategyKind::Auto,
            precision: Precision::F32,
            num_threads: None,
        }
    }
}

/// The engineering under a training loop; see the `fabric_loop` example.
pub struct Fabric {
    strategy: Box<dyn Strategy>,
    params: Vec<Tensor>,
    backward_sync: bool,
}

impl Fabric {
    /// Fabric for `config`: picks the device and strategy, sets the thread count.
    pub fn new(config: &FabricConfig) -> Result<Self> {
        if let Some(n) = config.num_threads {
            if n == 0 {
                return Err(Error::Config("num_threads must be at least 1".into()));
            }
            tch::set_num_threads(n as i32);
        }
        let device = select_device(config.accelerator, config.devices)?;
        let strategy: Box<dyn Strategy> = match config.strategy {
            StrategyKind::Auto | StrategyKind::SingleDevice => Box::new(SingleDevice::new(device)),
        };
        Ok(Self::with_strategy(strategy))
    }

    /// Fabric over a strategy of the caller's.
    pub fn with_strategy(strategy: Box<dyn Strategy>) -> Self {
        Fabric { strategy, params: Vec::new(), backward_sync: true }
    }

    /// Seeds libtorch's generators (CPU and every GPU).
    pub fn seed_everything(seed: u64) {
        tch::manual_seed(seed as i64);
        if tch::Cuda::is_available() {
            tch::Cuda::manual_seed_all(seed);
        }
    }

    /// The device this rank computes on.
    pub fn device(&self) -> Device {
        self.strategy.root_device()
    }
    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.strategy.rank()
    }
    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.strategy.world_size()
    }
    /// Whether this rank writes files.
    pub fn is_global_zero(&self) -> bool {
        self.strategy.is_global_zero()
    }
    /// The strategy's name.
    pub fn strategy_name(&self) -> &'static str {
        self.strategy.name()
    }

    /// Moves the model to the device and registers its parameters for gradient sync.
    pub fn setup_module(&mut self, vs: &nn::VarStore) -> Result<()> {
        self.strategy.setup_module(vs)?;
        self.params = vs.trainable_variables();
        Ok(())
    }

    /// `setup_module`, then an optimizer over the model's trainable variables.
    pub fn setup(&mut self, vs: &nn::VarStore, spec: OptimizerSpec) -> Result<Optimizer> {
        self.setup_module(vs)?;
        Ok(Optimizer::new(spec, vs))
    }

    /// The loader giving this rank its shard of every epoch.
    pub fn setup_dataloader<B: Batch>(&self, loader: DataLoader<B>) -> DataLoader<B> {
        if self.world_size() > 1 {
            loader.sharded(self.rank(), self.world_size())
        } else {
            loader
        }
    }

    /// Backpropagates `loss`, then averages gradients across ranks unless sync is off.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        loss.f_backward()?;
        if self.backward_sync {
            let grads: Vec<Tensor> = self.params.iter().map(Tensor::grad).collect();
            self.strategy.reduce_gradients(&grads)?;
        }
        Ok(())
    }

    /// Runs `f` without cross-rank gradient sync in `backward` (for accumulation steps).
    pub fn no_backward_sync<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let previous = std::mem::replace(&mut self.backward_sync, false);
        let out = f(self);
        self.backward_sync = previous;
        out
    }

    /// Clips the optimizer's gradients; returns the norm before clipping (for `Norm`).
    pub fn clip_gradients(&self, opt: &Optimizer, max: f64, algorithm: ClipAlgorithm) -> Option<f64> {
        clip_gradients(&opt.grads(), max, algorithm)
    }

    /// Reduces `t` across ranks.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.strategy.all_reduce(t, op)
    }
    /// Every rank's `t`.
    pub fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        self.strategy.all_gather(t)
    }
    /// Rank `src`'s `t`.
    pub fn broadcast(&self, t: &Tensor, src: usize) -> Result<Tensor> {
        self.strategy.broadcast(t, src)
    }
    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        self.strategy.barrier()
    }
    /// Runs `f` on rank zero first, then on the others (e.g. to prepare data once).
    pub fn rank_zero_first<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        if self.is_global_zero() {
            let out = f();
            self.barrier()?;
            Ok(out)
        } else {
            self.barrier()?;
            Ok(f())
        }
    }

    /// Writes `ckpt` to `path` atomically, on rank zero only.
    pub fn save(&self, path: &Path, ckpt: &Checkpoint) -> Result<()> {
        if self.is_global_zero() {
            ckpt.save(path)?;
        }
        Ok(())
    }

    /// Reads a checkpoint and copies its model tensors into `vs` (every rank).
    pub fn load(&self, path: &Path, vs: &nn::VarStore) -> Result<Checkpoint> {
        let ckpt = Checkpoint::load(path)?;
        checkpoint::restore_model(vs, &ckpt, path)?;
        Ok(ckpt)
    }
}
