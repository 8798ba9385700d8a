//! The job controller: a loop that drives every pending and running job toward its end.
//! A pending job gets its first attempt; a running one's nodes are observed each tick,
//! and when one fails or is lost the others are stopped and the next attempt starts
//! (same job id, a fresh `MASTER_PORT`), until `retry.max_restarts` is spent. All it
//! knows lives in the store, so a restarted controller picks up where the last one was.
use crate::backend::{
    local::Local, send_tree, slurm::Slurm, ssh::Ssh, Backend, Launch, Observed, Stop, Unplaced,
};
use crate::jobs::{Job, JobStatus, Node, NodeStatus};
use crate::store::{now_ms, Store, StoreError};
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use volt_config::BackendKind;

/// How often running nodes are looked at.
pub const TICK: Duration = Duration::from_millis(200);
/// How long a node has between SIGTERM and SIGKILL when another node failed (it is most
/// likely blocked in a collective with the dead one).
pub const FAILURE_GRACE: Duration = Duration::from_secs(2);
/// How long a cancelled node has to write `last` before SIGKILL.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Drives jobs; one per control plane.
pub struct Controller {
    store: Store,
    /// Where attempts keep their logs and exit codes: `jobs/ID/attempt-K/`.
    home: PathBuf,
    local: Local,
    ssh: Ssh,
    slurm: Slurm,
    /// Jobs whose nodes are being stopped in the background (the ticks pass them by).
    settling: Mutex<HashSet<i64>>,
    /// Wakes the loop before its tick (a job was launched or cancelled).
    pub wake: Notify,
}

impl Controller {
    /// A controller over `store`, keeping files under `home`.
    pub fn new(store: Store, home: PathBuf) -> Arc<Self> {
        let ssh = Ssh::new(home.join("ssh"));
        let settling = Mutex::default();
        let (local, slurm) = (Local::default(), Slurm::default());
        Arc::new(Controller { store, home, local, ssh, slurm, settling, wake: Notify::new() })
    }

    /// The folder of a job's attempt.
    pub fn attempt_dir(&self, job: i64, attempt: i64) -> PathBuf {
        self.home.join("jobs").join(job.to_string()).join(format!("attempt-{attempt}"))
    }

    /// The log of a node of an attempt.
    pub fn log_path(&self, job: i64, attempt: i64, rank: i64) -> PathBuf {
        self.attempt_dir(job, attempt).join(format!("node-{rank}.log"))
    }

    /// The backend of a job whose backend exists (checked when it was driven).
    fn backend_of(&self, job: &Job) -> &dyn Backend {
        self.backend(job.spec.spec.backend.kind).unwrap_or(&self.local)
    }

    fn backend(&self, kind: BackendKind) -> Option<&dyn Backend> {
        match kind {
            BackendKind::Local => Some(&self.local),
            BackendKind::Ssh => Some(&self.ssh),
            BackendKind::Slurm => Some(&self.slurm),
        }
    }

    /// Runs forever: a tick, then a wait for the next one or a wake-up. Jobs already
    /// running (this control plane restarted) are noted as re-adopted first.
    pub async fn run(self: Arc<Self>) {
        if let Err(e) = self.readopt().await {
            tracing::error!("job controller: {e}");
        }
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!("job controller: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn readopt(&self) -> Result<(), StoreError> {
        for job in self.store.active_jobs().await?.iter().filter(|j| j.status == JobStatus::Running) {
            let what = format!("re-adopted attempt {} after a restart of the control plane", job.attempt);
            self.store.event(job.id, job.attempt, &what).await?;
        }
        Ok(())
    }

    /// One pass over the active jobs.
    pub async fn tick(self: &Arc<Self>) -> Result<(), StoreError> {
        for job in self.store.active_jobs().await? {
            if self.settling.lock().unwrap_or_else(|e| e.into_inner()).contains(&job.id) {
                continue;
            }
            self.drive(&job).await?;
        }
        Ok(())
    }

    /// Runs `work` on `job` in a task of its own (stopping nodes waits out their grace),
    /// so that the other jobs' ticks go on meanwhile.
    fn settle<F>(self: &Arc<Self>, job: &Job, work: impl FnOnce(Arc<Self>, Job) -> F)
    where
        F: Future<Output = Result<(), StoreError>> + Send + 'static,
    {
        self.settling.lock().unwrap_or_else(|e| e.into_inner()).insert(job.id);
        let (this, id) = (Arc::clone(self), job.id);
        let task = work(Arc::clone(self), job.clone());
        tokio::spawn(async move {
            if let Err(e) = task.await {
                tracing::error!("job controller, job {id}: {e}");
            }
            this.settling.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            this.wake.notify_one();
        });
    }

    async fn drive(self: &Arc<Self>, job: &Job) -> Result<(), StoreError> {
        let Some(backend) = self.backend(job.spec.spec.backend.kind) else {
            let reason = format!("the {} backend is not available in this control plane", job.backend);
            self.store.event(job.id, job.attempt, &reason).await?;
            return self.store.set_job(job.id, JobStatus::Failed, job.attempt, Some(&reason)).await;
        };
        if job.status == JobStatus::Pending {
            if job.cancel_requested {
                let reason = "cancelled before it started";
                self.store.event(job.id, 0, reason).await?;
                return self.store.set_job(job.id, JobStatus::Cancelled, 0, Some(reason)).await;
            }
            return self.start_attempt(backend, job, job.attempt + 1).await;
        }
        let nodes = self.store.nodes(job.id, Some(job.attempt)).await?;
        if job.cancel_requested {
            self.settle(job, |this, job| async move {
                let backend = this.backend_of(&job);
                this.stop_nodes(backend, &nodes, CANCEL_GRACE).await?;
                blocking(|| backend.end(&job_uid(&job)));
                this.store.event(job.id, job.attempt, "cancelled").await?;
                this.store.set_job(job.id, JobStatus::Cancelled, job.attempt, Some("cancelled")).await
            });
            return Ok(());
        }
        let mut failures = Vec::new();
        let mut succeeded = 0;
        for node in &nodes {
            let (status, code, why) = match node.status {
                NodeStatus::Running => match blocking(|| backend.observe(&node.handle)) {
                    Observed::Running => {
                        blocking(|| backend.collect(&node.handle, false));
                        continue;
                    }
                    Observed::Exited(0) => (NodeStatus::Succeeded, Some(0), None),
                    Observed::Exited(c) => {
                        (NodeStatus::Failed, Some(c), Some(format!("exited with code {c}")))
                    }
                    Observed::Lost(why) => (NodeStatus::Lost, None, Some(format!("was lost: {why}"))),
                },
                NodeStatus::Succeeded => {
                    succeeded += 1;
                    continue;
                }
                other => {
                    failures.push(format!("node {} on {} is {}", node.rank, node.host, other.as_str()));
                    continue;
                }
            };
            blocking(|| backend.collect(&node.handle, true));
            self.store.set_node(node, status, code).await?;
            match why {
                Some(why) => {
                    let what = format!("node {} on {} {why}", node.rank, node.host);
                    self.store.event(job.id, job.attempt, &what).await?;
                    failures.push(what);
                }
                None => succeeded += 1,
            }
        }
        // A start cut short by a restart of the controller left nodes unstarted.
        if nodes.len() < job.num_nodes as usize && failures.is_empty() {
            failures.push(format!("{} of {} nodes were started", nodes.len(), job.num_nodes));
        }
        if !failures.is_empty() {
            // The nodes as they are now: those that failed are marked so, and keep it.
            let nodes = self.store.nodes(job.id, Some(job.attempt)).await?;
            self.settle(job, |this, job| async move {
                let backend = this.backend_of(&job);
                this.stop_nodes(backend, &nodes, FAILURE_GRACE).await?;
                let reason = format!("attempt {} failed: {}", job.attempt, failures.join("; "));
                if job.attempt < job.max_attempts() {
                    let next = format!("{reason}; starting attempt {}", job.attempt + 1);
                    this.store.event(job.id, job.attempt, &next).await?;
                    return this.start_attempt(backend, &job, job.attempt + 1).await;
                }
                let reason = format!("{reason} (attempt {} of {})", job.attempt, job.max_attempts());
                blocking(|| backend.end(&job_uid(&job)));
                this.store.event(job.id, job.attempt, &reason).await?;
                this.store.set_job(job.id, JobStatus::Failed, job.attempt, Some(&reason)).await
            });
            return Ok(());
        }
        if succeeded == job.num_nodes as usize {
            // Nothing may run on (Slurm could have requeued a run that has just exited).
            blocking(|| backend.end(&job_uid(job)));
            self.store.event(job.id, job.attempt, "every node exited 0").await?;
            return self.store.set_job(job.id, JobStatus::Succeeded, job.attempt, None).await;
        }
        Ok(())
    }

    /// SIGTERM to every running node of `nodes`, SIGKILL to those still running after
    /// `grace`; each is then `stopped`.
    async fn stop_nodes(
        &self,
        backend: &dyn Backend,
        nodes: &[Node],
        grace: Duration,
    ) -> Result<(), StoreError> {
        let running: Vec<&Node> = nodes.iter().filter(|n| n.status == NodeStatus::Running).collect();
        // A node whose host cannot be reached is lost with it, and said so.
        let mut unreachable: Vec<(&Node, String)> = Vec::new();
        for n in &running {
            if let Err(why) = blocking(|| backend.stop(&n.handle, Stop::Term)) {
                unreachable.push((n, why));
            }
        }
        let reached: Vec<&&Node> =
            running.iter().filter(|n| !unreachable.iter().any(|(u, _)| u == *n)).collect();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline
            && blocking(|| reached.iter().any(|n| !backend.stopped(&n.handle)))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for n in reached {
            let (killed, code) = blocking(|| {
                let killed = backend.stop(&n.handle, Stop::Kill);
                backend.collect(&n.handle, true);
                match backend.observe(&n.handle) {
                    Observed::Exited(c) => (killed, Some(c)),
                    _ => (killed, None),
                }
            });
            match killed {
                // Its host stopped answering during the grace: lost with it.
                Err(why) => unreachable.push((*n, why)),
                Ok(()) => self.store.set_node(n, NodeStatus::Stopped, code).await?,
            }
        }
        for (n, why) in unreachable {
            self.store.set_node(n, NodeStatus::Lost, None).await?;
            self.store
                .event(n.job_id, n.attempt, &format!("node {} on {} was lost: {why}", n.rank, n.host))
                .await?;
        }
        Ok(())
    }

    /// Starts attempt `attempt` of `job` on all its nodes. The job is marked running at
    /// that attempt first, so that a controller killed halfway finds the attempt short
    /// of nodes and retries it, rather than starting a second copy of it.
    async fn start_attempt(&self, backend: &dyn Backend, job: &Job, attempt: i64) -> Result<(), StoreError> {
        let spec = &job.spec.spec;
        let busy = self.store.busy_hosts(job.id).await?;
        let placement = match blocking(|| backend.place(spec.num_nodes, &job.spec.hosts, &busy)) {
            Ok(p) => p,
            Err(Unplaced::Refused(why)) => return self.fail_start(job, attempt, &why).await,
            Err(Unplaced::Wait(why)) => {
                // Pending until enough hosts are free; said once, not at every tick.
                if job.reason.as_deref() != Some(why.as_str()) {
                    self.store.event(job.id, attempt - 1, &why).await?;
                }
                return self.store.set_job(job.id, JobStatus::Pending, attempt - 1, Some(&why)).await;
            }
        };
        let workdir = match blocking(|| self.workdir(job)) {
            Ok(w) => w,
            Err(e) => return self.fail_start(job, attempt, &format!("the job's workdir: {e}")).await,
        };
        self.store.set_job(job.id, JobStatus::Running, attempt, None).await?;
        let dir = self.attempt_dir(job.id, attempt);
        // Node 0's address and a port free now, unless the nodes find them themselves.
        let rendezvous = match backend.master_addr(placement.first().and_then(Option::as_ref)) {
            None => None,
            Some(addr) => match free_port() {
                Ok(port) => Some((addr, port.to_string())),
                Err(e) => {
                    return self.fail_start(job, attempt, &format!("no free port for MASTER_PORT: {e}")).await
                }
            },
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return self.fail_start(job, attempt, &format!("cannot create {}: {e}", dir.display())).await;
        }
        let mut started = Vec::new();
        for (rank, host) in placement.into_iter().enumerate() {
            let mut env: Vec<(String, String)> =
                spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            if let Some((addr, port)) = &rendezvous {
                env.push(("MASTER_ADDR".into(), addr.clone()));
                env.push(("MASTER_PORT".into(), port.clone()));
            }
            env.extend(
                [
                    ("WORLD_SIZE", spec.num_nodes.to_string()),
                    ("RANK", rank.to_string()),
                    ("NODE_RANK", rank.to_string()),
                    ("LOCAL_RANK", "0".into()),
                    ("LOCAL_WORLD_SIZE", "1".into()),
                    ("VOLT_JOB_ID", job.id.to_string()),
                    // Job ids restart with a fresh store; this one names the job for good.
                    ("VOLT_JOB_UID", job_uid(job)),
                    ("VOLT_JOB_NAME", spec.name.clone()),
                    ("VOLT_JOB_ATTEMPT", attempt.to_string()),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
            let launch = Launch {
                rank,
                host,
                job_uid: job_uid(job),
                attempt,
                num_nodes: spec.num_nodes,
                resources: spec.resources.clone(),
                partition: spec.backend.partition.clone(),
                workdir: workdir.clone(),
                setup: spec.setup.clone(),
                run: spec.run.clone(),
                env,
                log: self.log_path(job.id, attempt, rank as i64),
                exit_file: dir.join(format!("node-{rank}.exit")),
            };
            match blocking(|| backend.start(&launch)) {
                Ok((host, handle)) => {
                    let node = Node {
                        job_id: job.id,
                        attempt,
                        rank: rank as i64,
                        host,
                        handle,
                        status: NodeStatus::Running,
                        exit_code: None,
                        started_at: now_ms(),
                        ended_at: None,
                    };
                    self.store.insert_node(&node).await?;
                    started.push(node);
                }
                Err(e) => {
                    self.stop_nodes(backend, &started, FAILURE_GRACE).await?;
                    return self.fail_start(job, attempt, &format!("node {rank} did not start: {e}")).await;
                }
            }
        }
        let mut hosts: Vec<&str> = started.iter().map(|n| n.host.as_str()).collect();
        hosts.dedup();
        let port = rendezvous.map(|(_, port)| format!(", MASTER_PORT {port}")).unwrap_or_default();
        let what =
            format!("attempt {attempt} started: {} node(s) on {}{port}", started.len(), hosts.join(", "));
        self.store.event(job.id, attempt, &what).await
    }

    /// Where a job's nodes run from: the spec's folder for local nodes and Slurm's (which
    /// share this machine's filesystem, as a cluster's nodes share its login node's); for hosts, the
    /// control plane's copy of it (made at the first attempt), which gathers what node 0
    /// writes and goes to every host of each attempt.
    fn workdir(&self, job: &Job) -> std::io::Result<PathBuf> {
        if job.spec.spec.backend.kind != BackendKind::Ssh {
            return Ok(job.spec.workdir.clone());
        }
        let copy = self.home.join("jobs").join(job.id.to_string()).join("work");
        if !copy.is_dir() {
            let partial = copy.with_extension("partial");
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial)?;
            // tar rather than cp: it leaves out the control plane's own home when that lies
            // inside the workdir (it would copy itself), and sockets.
            let src = &job.spec.workdir;
            let home_inside = std::fs::canonicalize(&self.home).ok().and_then(|h| {
                std::fs::canonicalize(src).ok().and_then(|s| h.strip_prefix(s).ok().map(PathBuf::from))
            });
            let mut unpack = std::process::Command::new("tar");
            unpack.arg("-C").arg(&partial).args(["-xf", "-"]);
            send_tree(src, home_inside.as_deref(), &mut unpack)?;
            std::fs::rename(&partial, &copy)?;
        }
        Ok(copy)
    }

    /// An attempt that could not start: the job fails, naming why (starting again would
    /// meet the same problem).
    async fn fail_start(&self, job: &Job, attempt: i64, why: &str) -> Result<(), StoreError> {
        blocking(|| self.backend_of(job).end(&job_uid(job)));
        self.store.event(job.id, attempt, why).await?;
        self.store.set_job(job.id, JobStatus::Failed, attempt, Some(why)).await
    }
}

/// Runs a backend call, which may wait on ssh or tar, without holding up the runtime's
/// other tasks (the API): on a multi-thread runtime its worker hands them on first.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(call),
        _ => call(),
    }
}

/// What names a job for good (job ids start again with a fresh store).
fn job_uid(job: &Job) -> String {
    format!("{}-{}", job.id, job.created_at)
}

/// A TCP port free on this machine now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
