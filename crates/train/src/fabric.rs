//! Fabric: devices, seeding, backward, clipping, collectives and checkpoints for users
//! who write their own loop. The Trainer is built on it.
use crate::checkpoint::{self, Checkpoint};
use crate::data::{Batch, DataLoader};
use crate::ddp::{Ddp, DdpOptions};
use crate::error::{Error, Result};
use crate::grad_scaler::{lock, GradScaler, SharedScaler};
use crate::optim::{clip_gradients, ClipAlgorithm, Optimizer, OptimizerSpec};
use crate::strategy::{
    select_device, Accelerator, CommStats, ReduceOp, SingleDevice, Strategy, StrategyKind,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tch::{nn, Device, Tensor};

pub use volt_config::trainer::{Precision, DEFAULT_DDP_TIMEOUT_S};

/// How Fabric (and so the Trainer) places and runs the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FabricConfig {
    /// cpu, cuda or auto.
    pub accelerator: Accelerator,
    /// Devices (processes, under `ddp`) per node.
    pub devices: usize,
    /// Nodes of a `ddp` job.
    pub num_nodes: usize,
    /// How devices cooperate.
    pub strategy: StrategyKind,
    /// Seconds a `ddp` rendezvous or collective may wait for the other ranks.
    pub ddp_timeout_s: u64,
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
            num_nodes: 1,
            strategy: StrategyKind::Auto,
            ddp_timeout_s: DEFAULT_DDP_TIMEOUT_S,
            precision: Precision::F32,
            num_threads: None,
        }
    }
}

impl FabricConfig {
    /// Whether this configuration runs one process per device.
    pub fn is_ddp(&self) -> bool {
        match self.strategy {
            StrategyKind::Ddp => true,
            StrategyKind::Auto => self.devices * self.num_nodes > 1,
            StrategyKind::SingleDevice => false,
        }
    }

    /// Threads per rank when none are configured: the cores shared among the local
    /// ranks (as Lightning does), unless `OMP_NUM_THREADS` says otherwise.
    fn threads(&self) -> Option<usize> {
        if self.num_threads.is_some() || !self.is_ddp() || std::env::var_os("OMP_NUM_THREADS").is_some() {
            return self.num_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some((cores / self.devices.max(1)).max(1))
    }
}

/// The engineering under a training loop; see the `fabric_loop` example.
pub struct Fabric {
    strategy: Box<dyn Strategy>,
    params: Vec<Tensor>,
    backward_sync: bool,
    precision: Precision,
    /// `16-mixed`'s gradient scaler, shared with the optimizers it prepares.
    scaler: Option<SharedScaler>,
}

impl Fabric {
    /// Fabric for `config`: picks the device and strategy, sets the thread count.
    pub fn new(config: &FabricConfig) -> Result<Self> {
        // Before any rendezvous: a refused precision must not hold up the other ranks.
        // As Lightning: float16 autocast and its scaler are CUDA's.
        let on_cuda = tch::Cuda::is_available() && config.accelerator != Accelerator::Cpu;
        if config.precision == Precision::F16Mixed && !on_cuda {
            return Err(Error::Config(
                "precision = \"16-mixed\": float16 training needs a gradient scaler on a CUDA device, \
                 and this run is on the CPU; use \"bf16-mixed\""
                    .into(),
            ));
        }
        let scaler = (config.precision == Precision::F16Mixed).then(|| GradScaler::default().shared());
        if let Some(n) = config.threads() {
            if n == 0 {
                return Err(Error::Config("num_threads must be at least 1".into()));
            }
            tch::set_num_threads(n as i32);
        }
        let strategy: Box<dyn Strategy> = if config.is_ddp() {
            Box::new(Ddp::new(&DdpOptions {
                devices: config.devices,
                num_nodes: config.num_nodes,
                accelerator: config.accelerator,
                timeout: Duration::from_secs(config.ddp_timeout_s),
                bucket_cap_mb: 25.0,
            })?)
        } else if config.devices != 1 || config.num_nodes != 1 {
            return Err(Error::Config(format!(
                "strategy \"single_device\" runs one device, but devices={} and num_nodes={}; \
                 use strategy \"ddp\"",
                config.devices, config.num_nodes
            )));
        } else {
            Box::new(SingleDevice::new(select_device(config.accelerator)?))
        };
        Ok(Fabric { precision: config.precision, scaler, ..Self::with_strategy(strategy) })
    }

    /// Fabric over a strategy of the caller's.
    pub fn with_strategy(strategy: Box<dyn Strategy>) -> Self {
        Fabric { strategy, params: Vec::new(), backward_sync: true, precision: Precision::F32, scaler: None }
    }

    /// Seeds libtorch's generators (CPU and every GPU) and the shuffle of data loaders
    /// made from now on without a seed of their own.
    pub fn seed_everything(seed: u64) {
        crate::data::set_run_seed(seed);
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
    /// This process's rank on its node.
    pub fn local_rank(&self) -> usize {
        self.strategy.local_rank()
    }
    /// This node's index.
    pub fn node_rank(&self) -> usize {
        self.strategy.node_rank()
    }
    /// Time spent in collectives so far (calls and wall time).
    pub fn comm_stats(&self) -> CommStats {
        self.strategy.comm_stats()
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
        if self.precision == Precision::Bf16True {
            tch::no_grad(|| -> Result<()> {
                for (_, mut t) in vs.variables() {
                    if t.is_floating_point() && t.kind() != tch::Kind::BFloat16 {
                        t.f_set_data(&t.f_to_kind(tch::Kind::BFloat16)?)?;
                    }
                }
                Ok(())
            })?;
        }
        self.strategy.setup_module(vs)?;
        self.params = vs.trainable_variables();
        Ok(())
    }

    /// The numeric precision.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs `f` (a forward pass and its loss) under the run's precision: libtorch's
    /// autocast to bfloat16 for `bf16-mixed`, as `torch.autocast` in Lightning's plugin,
    /// over float32 weights; `bf16-true` too, over bfloat16 weights, so that float32
    /// inputs meet them in bfloat16 (Lightning converts the inputs instead). As is for
    /// `32-true`. Autocast is per thread: backward needs none.
    pub fn autocast<R>(&self, f: impl FnOnce() -> Result<R>) -> Result<R> {
        let _autocast = match self.precision {
            Precision::F32 => None,
            Precision::Bf16Mixed | Precision::Bf16True => {
                Some(crate::ffi::Autocast::enter(self.device().is_cuda(), false)?)
            }
            Precision::F16Mixed => Some(crate::ffi::Autocast::enter(true, true)?),
        };
        f()
    }

    /// `setup_module`, then an optimizer over the model's trainable variables.
    pub fn setup(&mut self, vs: &nn::VarStore, spec: OptimizerSpec) -> Result<Optimizer> {
        self.setup_module(vs)?;
        let mut opt = Optimizer::new(spec, vs);
        self.prepare_optimizer(&mut opt);
        Ok(opt)
    }

    /// Gives `opt` the run's gradient scaler (`16-mixed`), which unscales its gradients
    /// and skips its steps that overflowed; nothing otherwise.
    pub fn prepare_optimizer(&self, opt: &mut Optimizer) {
        if let Some(s) = &self.scaler {
            opt.set_grad_scaler(s.clone());
        }
    }

    /// The loader giving this rank its shard of every epoch.
    pub fn setup_dataloader<B: Batch>(&self, loader: DataLoader<B>) -> DataLoader<B> {
        if self.world_size() > 1 {
            loader.sharded(self.rank(), self.world_size())
        } else {
            loader
        }
    }

    /// Backpropagates `loss` (times the gradient scaler's scale under `16-mixed`), then
    /// averages gradients across ranks unless sync is off.
    pub fn backward(&mut self, loss: &Tensor) -> Result<()> {
        match &self.scaler {
            Some(s) => lock(s).scale_loss(loss).f_backward()?,
            None => loss.f_backward()?,
        }
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
    pub fn clip_gradients(&self, opt: &Optimizer, max: f64, algorithm: ClipAlgorithm) -> Result<Option<f64>> {
        // Clipping bounds the true gradients, not the scaled ones.
        opt.unscale_grads();
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
    /// Rank `src`'s bytes, on every rank (e.g. a path or a decision as text).
    pub fn broadcast_bytes(&self, bytes: &[u8], src: usize) -> Result<Vec<u8>> {
        if self.world_size() == 1 {
            return Ok(bytes.to_vec());
        }
        let len = self.broadcast(&Tensor::from_slice(&[bytes.len() as i64]), src)?.int64_value(&[0]);
        if len <= 0 {
            return Ok(Vec::new());
        }
        let mut padded = bytes.to_vec();
        padded.resize(len.max(0) as usize, 0);
        let t = self.broadcast(&Tensor::from_slice(&padded), src)?;
        Ok(Vec::<u8>::try_from(&t)?)
    }
    /// Waits for every rank.
    pub fn barrier(&self) -> Result<()> {
        self.strategy.barrier()
    }
    /// Asks every rank to stop; see [`Fabric::stop_agreed`].
    pub fn request_stop(&mut self) {
        self.strategy.request_stop();
    }
    /// Whether some rank asked to stop, agreed at the latest synchronized backward so
    /// that every rank stops after the same step.
    pub fn stop_agreed(&self) -> bool {
        self.strategy.stop_agreed()
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
