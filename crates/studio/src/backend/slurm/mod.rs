//! Nodes as the tasks of a Slurm batch job: one `sbatch` per attempt, one task per node
//! (`--ntasks-per-node=1`), started by `srun` in the batch script; state from `scontrol
//! show job` (there may be no accounting store, so no `sacct`), signals and cancel by
//! `scancel`. The job is submitted with `--requeue`: when Slurm preempts it, loses one of
//! its nodes, or is told `scontrol requeue`, it runs the script again under the same
//! Slurm job id, and the controller takes that run as the job's next attempt (it adopts
//! it instead of submitting another). The nodes share the control plane's filesystem, as
//! a cluster's login and compute nodes do: they run in the spec's workdir and write their
//! logs and exit codes into the control plane's attempt folders.
mod commands;
mod script;

use super::{exit_code, Backend, Launch, Observed, Stop};
use commands::{is_final, job_name, parse_job, release, slurm, JobInfo};
use script::{batch_script, cpus_per_task, slurm_memory};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use volt_config::Host;

/// How long what `scontrol` said of a job is used before asking again: one look serves
/// every node of an attempt, and slurmctld is not polled at the controller's tick.
const FRESH: Duration = Duration::from_millis(500);

/// The slurm backend.
#[derive(Default)]
pub struct Slurm {
    seen: Mutex<HashMap<u64, (Instant, Option<JobInfo>)>>,
    /// The nodes each job was last seen running on (a requeued job no longer says).
    nodes: Mutex<HashMap<u64, String>>,
    /// Each node's heartbeat file: what it last held, and when that changed (by this
    /// machine's clock; the node's may differ).
    beats: Mutex<HashMap<PathBuf, (String, Instant)>>,
    /// The Slurm job node 0 of each (job uid, attempt) started: the other nodes' too.
    attempts: Mutex<HashMap<(String, i64), JobInfo>>,
    /// Hosts each job's nodes fell silent on: its later attempts are kept off them
    /// (Slurm marks a node down only after its SlurmdTimeout, minutes on most clusters).
    silent_hosts: Mutex<HashMap<String, Vec<String>>>,
}

/// How long a running node may stay silent before it counts as lost with its host.
pub const LOST_AFTER: Duration = Duration::from_secs(3);
/// The same for a node being stopped (another failed, most often because this one's
/// host was lost): twice its beat, since calling it lost then restarts nothing.
const LOST_WHEN_STOPPING: Duration = Duration::from_secs(2);

#[derive(Serialize, Deserialize)]
struct Handle {
    /// The Slurm job id.
    job: u64,
    /// Slurm's restart count of the run this node belongs to.
    run: u32,
    rank: usize,
    exit_file: PathBuf,
    /// The volt job's uid (absent in handles of older controllers).
    #[serde(default)]
    job_uid: Option<String>,
}

impl Slurm {
    /// What Slurm says of job `id` now; `None` once it no longer knows it (it forgets a
    /// job `MinJobAge` after it ended). Errors reaching slurmctld are `Err`.
    fn info(&self, id: u64) -> Result<Option<JobInfo>, String> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, info)) = seen.get(&id) {
            if at.elapsed() < FRESH {
                return Ok(info.clone());
            }
        }
        let info = match slurm("scontrol", &["show", "job", "-o", &id.to_string()]) {
            Ok(out) => out.lines().find_map(parse_job),
            Err(e) if e.contains("Invalid job id") => None,
            Err(e) => return Err(e),
        };
        seen.insert(id, (Instant::now(), info.clone()));
        Ok(info)
    }

    fn forget(&self, id: u64) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Every job of volt job `uid` Slurm still runs or will run.
    fn active_jobs(&self, uid: &str) -> Result<Vec<JobInfo>, String> {
        let ids = slurm("squeue", &["-h", "-o", "%i", "--name", &job_name(uid)])?;
        let mut jobs = Vec::new();
        for id in ids.lines().filter_map(|l| l.trim().parse::<u64>().ok()) {
            self.forget(id);
            if let Some(info) = self.info(id)?.filter(JobInfo::active) {
                jobs.push(info);
            }
        }
        Ok(jobs)
    }

    /// The Slurm job that runs `launch`'s attempt: for node 0, the one Slurm already runs
    /// as that attempt (a requeued run) or a new one; the other nodes join node 0's. Any
    /// other run of the job belongs to an attempt the controller gave up on (one a
    /// controller submitted just before it was killed, too) and is cancelled first, so
    /// nothing runs twice.
    fn job_for(&self, launch: &Launch) -> std::io::Result<JobInfo> {
        let key = (launch.job_uid.clone(), launch.attempt);
        if launch.rank > 0 {
            if let Some(job) = self.attempts.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
                return Ok(job.clone());
            }
        }
        let job = self.find_or_submit(launch)?;
        self.attempts.lock().unwrap_or_else(|e| e.into_inner()).insert(key, job.clone());
        Ok(job)
    }

    fn find_or_submit(&self, launch: &Launch) -> std::io::Result<JobInfo> {
        let active = self.active_jobs(&launch.job_uid).map_err(std::io::Error::other)?;
        let mut adopted = None;
        for job in active {
            if adopted.is_none() && job.attempt() == Some(launch.attempt) {
                adopted = Some(job);
            } else if launch.rank == 0 {
                let _ = slurm("scancel", &[&job.id.to_string()]);
                self.forget(job.id);
            }
        }
        if let Some(job) = adopted {
            release(&job);
            return Ok(job);
        }
        if launch.rank > 0 {
            return Err(std::io::Error::other(format!(
                "the Slurm job of attempt {} (submitted for node 0) is gone",
                launch.attempt
            )));
        }
        let id = self.submit(launch)?;
        self.forget(id);
        self.info(id)
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other(format!("Slurm does not know job {id} it just accepted")))
    }

    fn submit(&self, launch: &Launch) -> std::io::Result<u64> {
        let attempt_dir = launch.log.parent().unwrap_or(Path::new(".")).to_path_buf();
        let job_dir = attempt_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
        let script = attempt_dir.join("job.sbatch");
        volt_formats::atomic::write_atomic(&script, batch_script(launch, &job_dir).as_bytes())?;
        let n = launch.num_nodes.to_string();
        let mut args: Vec<String> = ["--parsable", "--requeue", "--open-mode=append", "--ntasks-per-node=1"]
            .map(String::from)
            .to_vec();
        args.extend([
            format!("--job-name={}", job_name(&launch.job_uid)),
            format!("--comment=volt-attempt={}", launch.attempt),
            format!("--nodes={n}"),
            format!("--ntasks={n}"),
            format!("--chdir={}", launch.workdir.display()),
            format!("--output={}", job_dir.join("slurm-%j.log").display()),
        ]);
        if let Some(p) = &launch.partition {
            args.push(format!("--partition={p}"));
        }
        if let Some(cpus) = cpus_per_task(launch) {
            args.push(format!("--cpus-per-task={cpus}"));
        }
        let silent =
            self.silent_hosts.lock().unwrap_or_else(|e| e.into_inner()).get(&launch.job_uid).cloned();
        if let Some(hosts) = silent.filter(|h| !h.is_empty()) {
            args.push(format!("--exclude={}", hosts.join(",")));
        }
        if let Some(mem) = &launch.resources.memory {
            args.push(format!("--mem={}", slurm_memory(mem)));
        }
        if let Some(gpus) = &launch.resources.gpus {
            args.push(format!("--gpus-per-node={gpus}"));
        }
        args.push(script.display().to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = slurm("sbatch", &refs).map_err(std::io::Error::other)?;
        // --parsable: "ID" or "ID;cluster".
        out.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("sbatch answered {out:?}, not a job id")))
    }

    /// Why a run of `job` was requeued, as far as Slurm says: a node of its last
    /// allocation that is down, named.
    fn why_requeued(&self, job: &JobInfo, nodes: &str) -> String {
        let mut why =
            format!("Slurm requeued job {} (preempted, a node failed, or scontrol requeue)", job.id);
        if nodes.is_empty() {
            return why;
        }
        if let Ok(out) = slurm("sinfo", &["-h", "-N", "-n", nodes, "-o", "%N %t %E"]) {
            let down: Vec<String> = out
                .lines()
                .filter(|l| {
                    l.split_whitespace().nth(1).is_some_and(|s| {
                        s.contains("down") || s.contains("fail") || s.ends_with('*') || s.contains("drain")
                    })
                })
                .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
                .collect();
            if !down.is_empty() {
                why = format!("{why}: Slurm node {} stopped answering", down.join(", "));
            }
        }
        why
    }
}

impl Backend for Slurm {
    fn master_addr(&self, _host: Option<&Host>) -> Option<String> {
        // The batch script sets it to the allocation's first host.
        None
    }

    fn start(&self, launch: &Launch) -> std::io::Result<(String, String)> {
        let job = self.job_for(launch)?;
        let handle = Handle {
            job: job.id,
            run: job.restarts,
            rank: launch.rank,
            exit_file: launch.exit_file.clone(),
            job_uid: Some(launch.job_uid.clone()),
        };
        let json = serde_json::to_string(&handle).map_err(std::io::Error::other)?;
        Ok((format!("slurm job {}", job.id), json))
    }

    fn observe(&self, handle: &str) -> Observed {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else {
            return Observed::Lost(format!("a handle this controller cannot read: {handle}"));
        };
        // An exit code may come from a run Slurm just requeued (0 after its SIGTERM): read
        // it first, then ask Slurm afresh before taking it.
        let code = exit_code(&h.exit_file);
        if code.is_some() {
            self.forget(h.job);
        }
        let info = match self.info(h.job) {
            Ok(info) => info,
            // slurmctld does not answer: the node is not known to be gone.
            Err(e) => {
                tracing::warn!("slurm job {}: {e}", h.job);
                return Observed::Running;
            }
        };
        if let Some(job) = info.as_ref().filter(|j| j.restarts > h.run) {
            let nodes = self.seen_nodes(h.job);
            return Observed::Lost(self.why_requeued(job, &nodes));
        }
        if let Some(code) = code {
            return Observed::Exited(code);
        }
        match info {
            // A run Slurm holds (a launch that failed, an admin's hold) would wait forever.
            Some(job) if job.state == "PENDING" && job.reason.to_lowercase().contains("held") => {
                Observed::Lost(format!("Slurm holds job {} ({})", job.id, job.reason))
            }
            Some(job) if !is_final(&job.state) => {
                release(&job);
                self.remember_nodes(h.job, &job.nodes);
                match self.silence(&h, LOST_AFTER) {
                    Some(why) => Observed::Lost(why),
                    None => Observed::Running,
                }
            }
            // It may have written its code between the two looks.
            info => match (exit_code(&h.exit_file), info) {
                (Some(code), _) => Observed::Exited(code),
                (None, Some(job)) => Observed::Lost(format!(
                    "Slurm job {} ended {} ({}) without this node's exit code (killed, or its node failed)",
                    job.id, job.state, job.reason
                )),
                (None, None) => Observed::Lost(format!(
                    "Slurm no longer knows job {} and the node left no exit code",
                    h.job
                )),
            },
        }
    }

    fn stop(&self, handle: &str, how: Stop) -> Result<(), String> {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else { return Ok(()) };
        self.forget(h.job);
        let pending = match self.info(h.job) {
            // The job now runs a later attempt (requeued): this node's run is over.
            Ok(Some(job)) if job.restarts == h.run && job.active() => job.state == "PENDING",
            Ok(_) => return Ok(()),
            // slurmctld does not answer: cancel all the same (it may hear it yet).
            Err(_) => false,
        };
        let id = h.job.to_string();
        let sent = match how {
            // Nothing runs yet to write anything: Slurm takes no signal for it, only a cancel.
            _ if pending => slurm("scancel", &[&id]).map(drop),
            // To the tasks of every step: volt fit writes `last`.
            Stop::Term => slurm("scancel", &["--signal=TERM", &id]).map(drop),
            Stop::Kill => {
                let _ = slurm("scancel", &["--full", "--signal=KILL", &id]);
                slurm("scancel", &[&id]).map(drop)
            }
        };
        // Signalled or not, a silent node is lost with its host (and said so).
        match self.silence(&h, LOST_WHEN_STOPPING) {
            Some(why) => Err(why),
            None => sent,
        }
    }

    fn stopped(&self, handle: &str) -> bool {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else { return true };
        // The look of the last half second will do: this is asked every 50 ms per node.
        match self.info(h.job) {
            Ok(Some(job)) => job.restarts != h.run || !job.active(),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    fn end(&self, job_uid: &str) {
        let _ = slurm("scancel", &["--name", &job_name(job_uid)]);
    }
}

impl Slurm {
    /// Why the node of `h` counts as lost with its host: it beat, and has been silent
    /// for `after` since. `None` before its first beat (Slurm may not have started it).
    fn silence(&self, h: &Handle, after: Duration) -> Option<String> {
        // A node that exited has stopped beating, and is not lost.
        if h.exit_file.exists() {
            return None;
        }
        let beat = h.exit_file.with_extension("alive");
        let now = std::fs::read_to_string(&beat).ok()?;
        let mut beats = self.beats.lock().unwrap_or_else(|e| e.into_inner());
        let (last, since) = beats.entry(beat).or_insert_with(|| (now.clone(), Instant::now()));
        if *last != now {
            (*last, *since) = (now, Instant::now());
            return None;
        }
        let silent = since.elapsed();
        if silent < after {
            return None;
        }
        let host = std::fs::read_to_string(h.exit_file.with_extension("host")).unwrap_or_default();
        let host = host.trim().to_owned();
        if let Some(uid) = h.job_uid.as_ref().filter(|_| !host.is_empty()) {
            let mut silent_hosts = self.silent_hosts.lock().unwrap_or_else(|e| e.into_inner());
            let hosts = silent_hosts.entry(uid.clone()).or_default();
            if !hosts.contains(&host) {
                hosts.push(host.clone());
            }
        }
        Some(format!("its Slurm node {host} stopped answering: no sign of life for {} s", silent.as_secs()))
    }

    /// The nodes job `id` ran on when last seen running (a requeued job forgets them).
    fn seen_nodes(&self, id: u64) -> String {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned().unwrap_or_default()
    }
    fn remember_nodes(&self, id: u64, nodes: &str) {
        if !nodes.is_empty() {
            self.nodes.lock().unwrap_or_else(|e| e.into_inner()).insert(id, nodes.to_owned());
        }
    }
}
