//! Distributed data parallel over libtorch's c10d (TCPStore + Gloo): one process per
//! device, gradients averaged in buckets after backward, stop decisions agreed through
//! the same collective.
use crate::cluster::{ClusterEnv, LocalWorkers};
use crate::error::{Error, Result};
use crate::process_group::{ProcessGroup, Rendezvous};
use crate::strategy::{move_to_device, Accelerator, CommStats, ReduceOp, Strategy};
use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tch::{nn, Device, Kind, Tensor};

/// Options of the `ddp` strategy.
#[derive(Clone, Debug)]
pub struct DdpOptions {
    /// Processes (devices) per node.
    pub devices: usize,
    /// Number of nodes.
    pub num_nodes: usize,
    /// Which hardware each rank uses.
    pub accelerator: Accelerator,
    /// How long a collective or the rendezvous may wait for the other ranks.
    pub timeout: Duration,
    /// Largest gradient bucket, in MiB (PyTorch's `bucket_cap_mb`).
    pub bucket_cap_mb: f64,
}

/// Gradients that are reduced together: one flat buffer, one all-reduce.
struct Bucket {
    /// Indices into the gradient list, with each one's element count.
    members: Vec<(usize, i64)>,
    flat: Tensor,
}

/// One rank of a data-parallel job.
pub struct Ddp {
    env: ClusterEnv,
    device: Device,
    group: ProcessGroup,
    workers: Mutex<Option<LocalWorkers>>,
    bucket_cap_bytes: i64,
    buckets: Vec<Bucket>,
    layout: Vec<(Kind, i64)>,
    stop_requested: bool,
    stop_agreed: bool,
    stats: Cell<CommStats>,
}

impl Ddp {
    /// Joins the job the environment describes, or launches the other local ranks and
    /// joins as rank 0 of this node; returns once every rank has arrived.
    pub fn new(options: &DdpOptions) -> Result<Ddp> {
        if options.devices == 0 || options.num_nodes == 0 {
            return Err(Error::Config("trainer.devices and trainer.num_nodes must be at least 1".into()));
        }
        let (env, workers) = match ClusterEnv::detect()? {
            Some(env) => (env, None),
            None => {
                let (env, workers) = LocalWorkers::launch(options.devices, options.num_nodes)?;
                (env, Some(workers))
            }
        };
        env.check(options.devices, options.num_nodes)?;
        let device = rank_device(options.accelerator, env.local_rank)?;
        let iface = std::env::var("GLOO_SOCKET_IFNAME").ok();
        let group = ProcessGroup::join(&Rendezvous {
            addr: &env.master_addr,
            port: env.master_port,
            rank: env.rank,
            world_size: env.world_size,
            timeout: options.timeout,
            store_is_external: env.store_is_external,
            iface: iface.as_deref(),
        })?;
        Ok(Ddp {
            env,
            device,
            group,
            workers: Mutex::new(workers),
            bucket_cap_bytes: (options.bucket_cap_mb * 1024.0 * 1024.0) as i64,
            buckets: Vec::new(),
            layout: Vec::new(),
            stop_requested: false,
            stop_agreed: false,
            stats: Cell::new(CommStats::default()),
        })
    }

    /// This rank's place in the job.
    pub fn cluster(&self) -> &ClusterEnv {
        &self.env
    }

    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f();
        let mut s = self.stats.get();
        s.calls += 1;
        s.time += start.elapsed();
        self.stats.set(s);
        out
    }

    /// Turns a failed collective into an error naming the ranks that stopped answering.
    ///
    /// Ranks this process launched are asked directly; otherwise every surviving rank
    /// checks in at the rendezvous store and waits briefly for the others: whoever
    /// does not check in is lost. If the store itself is gone, its host (rank 0) is.
    fn lost(&self, during: &str, cause: Error) -> Error {
        let cause = match cause {
            Error::Distributed(m) => m,
            other => other.to_string(),
        };
        let (rank, world_size) = (self.env.rank, self.env.world_size);
        let err = |lost: String| Error::LostRank {
            lost,
            world_size,
            rank,
            during: during.into(),
            cause: cause.clone(),
        };
        let mut launched = self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(workers) = launched.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                let ended = workers.ended();
                if !ended.is_empty() {
                    let names: Vec<String> = ended.iter().map(|(r, why)| format!("{r} ({why})")).collect();
                    return err(names.join(", "));
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        drop(launched);
        let short = Duration::from_secs(2);
        let alive = self.group.store_set(&format!("volt/alive/{rank}"), "1", short);
        let store_gone = || {
            if self.env.store_is_external {
                format!(
                    "unknown: the launcher's rendezvous store at {}:{} no longer answers",
                    self.env.master_addr, self.env.master_port
                )
            } else {
                "0 (host of the rendezvous store, which no longer answers)".into()
            }
        };
        if alive.is_err() {
            return err(store_gone());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut missing: Vec<usize> = (0..world_size).filter(|&r| r != rank).collect();
        while !missing.is_empty() && Instant::now() < deadline {
            let mut still = Vec::new();
            for r in missing {
                match self.group.store_has(&format!("volt/alive/{r}"), short) {
                    Ok(true) => {}
                    Ok(false) => still.push(r),
                    // A store that fails mid-check is gone with its host.
                    Err(_) => return err(store_gone()),
                }
            }
            missing = still;
            std::thread::sleep(Duration::from_millis(100));
        }
        if missing.is_empty() {
            Error::Distributed(format!("{during} failed on rank {rank} with every rank alive: {cause}"))
        } else {
            err(missing.iter().map(usize::to_string).collect::<Vec<_>>().join(", "))
        }
    }

    /// Groups gradients into buckets of at most `bucket_cap_bytes`, last parameters first
    /// (the order backward produces them), one dtype per bucket. The first bucket has one
    /// extra element: the stop flag.
    fn build_buckets(&mut self, grads: &[Tensor]) -> Result<()> {
        let mut groups: Vec<(Kind, Vec<(usize, i64)>)> = Vec::new();
        let mut bytes = 0i64;
        for (i, g) in grads.iter().enumerate().rev() {
            let (kind, n) = (g.kind(), g.numel() as i64);
            let size = n * kind.elt_size_in_bytes() as i64;
            match groups.last_mut() {
                Some((k, members)) if *k == kind && bytes + size <= self.bucket_cap_bytes => {
                    members.push((i, n));
                    bytes += size;
                }
                _ => {
                    groups.push((kind, vec![(i, n)]));
                    bytes = size;
                }
            }
        }
        self.buckets.clear();
        for (b, (kind, members)) in groups.into_iter().enumerate() {
            let n: i64 = members.iter().map(|m| m.1).sum::<i64>() + i64::from(b == 0);
            let flat = Tensor::f_zeros([n], (kind, self.device))?;
            self.buckets.push(Bucket { members, flat });
        }
        Ok(())
    }
}

/// The device of local rank `local_rank`.
fn rank_device(accelerator: Accelerator, local_rank: usize) -> Result<Device> {
    let gpus = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
    match accelerator {
        Accelerator::Cpu => Ok(Device::Cpu),
        Accelerator::Auto if gpus == 0 => Ok(Device::Cpu),
        _ if local_rank < gpus => Ok(Device::Cuda(local_rank)),
        _ => Err(Error::Config(format!(
            "local rank {local_rank} needs GPU {local_rank} but libtorch sees {gpus}; \
             lower trainer.devices or use trainer.accelerator = \"cpu\""
        ))),
    }
}

impl Strategy for Ddp {
    fn name(&self) -> &'static str {
        "ddp"
    }
    fn root_device(&self) -> Device {
        self.device
    }
    fn rank(&self) -> usize {
        self.env.rank
    }
    fn world_size(&self) -> usize {
        self.env.world_size
    }
    fn local_rank(&self) -> usize {
        self.env.local_rank
    }
    fn node_rank(&self) -> usize {
        self.env.node_rank
    }

    /// Moves the model, then gives every rank rank 0's weights and buffers.
    fn setup_module(&mut self, vs: &nn::VarStore) -> Result<()> {
        move_to_device(vs, self.device)?;
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut t) in vars {
            let copy = t.contiguous().copy();
            if let Err(e) = self.timed(|| self.group.broadcast_(&copy, 0)) {
                return Err(self.lost(&format!("the broadcast of {name} from rank 0"), e));
            }
            tch::no_grad(|| t.f_copy_(&copy))?;
        }
        Ok(())
    }

    fn reduce_gradients(&mut self, grads: &[Tensor]) -> Result<()> {
        if let Some(i) = grads.iter().position(|g| !g.defined()) {
            return Err(Error::Distributed(format!(
                "trainable variable #{i} got no gradient on rank {}: every trainable variable must \
                 take part in the loss on every step (freeze it with requires_grad off otherwise)",
                self.env.rank
            )));
        }
        let layout: Vec<(Kind, i64)> = grads.iter().map(|g| (g.kind(), g.numel() as i64)).collect();
        if layout != self.layout || self.buckets.is_empty() {
            self.build_buckets(grads)?;
            self.layout = layout;
        }
        let world = self.env.world_size as f64;
        let flag = f64::from(u8::from(self.stop_requested));
        let mut agreed = false;
        for b in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            let mut offset = 0;
            for &(i, n) in &bucket.members {
                bucket.flat.narrow(0, offset, n).f_copy_(&grads[i].reshape([-1]))?;
                offset += n;
            }
            let has_flag = offset < bucket.flat.numel() as i64;
            if has_flag {
                let _ = bucket.flat.narrow(0, offset, 1).f_fill_(flag)?;
            }
            if let Err(e) = self.timed(|| self.group.all_reduce_(&self.buckets[b].flat, ReduceOp::Sum)) {
                return Err(self.lost("the all-reduce of gradients", e));
            }
            let bucket = &self.buckets[b];
            let mut flat = bucket.flat.shallow_clone();
            if has_flag {
                agreed = flat.f_double_value(&[offset])? > 0.0;
            }
            let _ = flat.f_div_scalar_(world)?;
            let mut offset = 0;
            for &(i, n) in &bucket.members {
                grads[i].shallow_clone().f_copy_(&flat.narrow(0, offset, n).view_as(&grads[i]))?;
                offset += n;
            }
        }
        self.stop_agreed |= agreed;
        Ok(())
    }

    fn request_stop(&mut self) {
        self.stop_requested = true;
    }

    fn stop_agreed(&self) -> bool {
        self.stop_agreed
    }

    fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let out = t.contiguous().copy();
        if let Err(e) = self.timed(|| self.group.all_reduce_(&out, op)) {
            return Err(self.lost("all_reduce", e));
        }
        Ok(if op == ReduceOp::Mean { out / self.env.world_size as f64 } else { out })
    }

    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        let shape = t.size();
        let input = t.contiguous().reshape([1, -1]);
        let out =
            Tensor::f_empty([self.env.world_size as i64, input.size()[1]], (input.kind(), input.device()))?;
        if let Err(e) = self.timed(|| self.group.all_gather_into(&out, &input)) {
            return Err(self.lost("all_gather", e));
        }
        Ok(out.unbind(0).into_iter().map(|row| row.reshape(shape.as_slice())).collect())
    }

    fn broadcast(&self, t: &Tensor, src: usize) -> Result<Tensor> {
        if src >= self.env.world_size {
            return Err(Error::Config(format!(
                "broadcast from rank {src} in a job of {}",
                self.env.world_size
            )));
        }
        let out = t.contiguous().copy();
        if let Err(e) = self.timed(|| self.group.broadcast_(&out, src)) {
            return Err(self.lost(&format!("a broadcast from rank {src}"), e));
        }
        Ok(out)
    }

    fn barrier(&self) -> Result<()> {
        if let Err(e) = self.timed(|| self.group.barrier()) {
            return Err(self.lost("a barrier", e));
        }
        Ok(())
    }

    fn comm_stats(&self) -> CommStats {
        self.stats.get()
    }
}
