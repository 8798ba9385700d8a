//! Nodes as the tasks of a Slurm batch job: one `sbatch` per attempt, one task per node
//! (`--ntasks-per-node=1`), started by `srun` in the batch script; state from `scontrol
//! show job` (there may be no accounting store, so no `sacct`), signals and cancel by
//! `scancel`. The job is submitted with `--requeue`: when Slurm preempts it, loses one of
//! its nodes, or is told `scontrol requeue`, it runs the script again under the same
//! Slurm job id, and the controller takes that run as the job's next attempt (it adopts
//! it instead of submitting another). The nodes share the control plane's filesystem, as
//! a cluster's login and compute nodes do: they run in the spec's workdir and write their
//! logs and exit codes into the control plane's attempt folders.
use super::{node_script_then, own_path, shell_quote, Backend, Launch, Observed, Stop};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// What `scontrol show job` says of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
struct JobInfo {
    id: u64,
    name: String,
    state: String,
    reason: String,
    restarts: u32,
    /// The attempt it was submitted as (`--comment volt-attempt=K`).
    base: Option<i64>,
    nodes: String,
}

impl JobInfo {
    /// The attempt its current run is: one more per requeue.
    fn attempt(&self) -> Option<i64> {
        self.base.map(|b| b + i64::from(self.restarts))
    }
    /// Whether Slurm still runs it or will (a requeued job is pending again).
    fn active(&self) -> bool {
        !is_final(&self.state)
    }
}

fn is_final(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "PREEMPTED"
            | "OUT_OF_MEMORY"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "SPECIAL_EXIT"
    )
}

/// Parses one job of `scontrol show job -o` (`Key=Value` words on a line; `Comment` is
/// last among those read here only by its name, so values are cut at the next key).
fn parse_job(line: &str) -> Option<JobInfo> {
    let field = |key: &str| -> Option<String> {
        let at = line
            .find(&format!(" {key}="))
            .map(|i| i + 1)
            .or_else(|| line.starts_with(&format!("{key}=")).then_some(0))?;
        let rest = &line[at + key.len() + 1..];
        Some(rest.split(' ').next().unwrap_or_default().to_owned())
    };
    Some(JobInfo {
        id: field("JobId")?.parse().ok()?,
        name: field("JobName").unwrap_or_default(),
        state: field("JobState")?,
        reason: field("Reason").unwrap_or_default(),
        restarts: field("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0),
        base: field("Comment").and_then(|c| c.strip_prefix("volt-attempt=").and_then(|a| a.parse().ok())),
        nodes: field("NodeList").filter(|n| n != "(null)").unwrap_or_default(),
    })
}

/// How long a Slurm command may take before the controller gives up on it (a slurmctld
/// that does not answer would otherwise hold up every job's tick).
const CALL_LIMIT: Duration = Duration::from_secs(20);

/// Runs a Slurm command; its standard output, or what it said on failure.
fn slurm(program: &str, args: &[&str]) -> Result<String, String> {
    let what = || format!("{program} {}", args.join(" "));
    // Slurm's clients would retry a missing configuration for a minute; say it at once.
    let conf = std::env::var_os("SLURM_CONF").map(PathBuf::from);
    if let Some(conf) = conf.as_ref().filter(|c| !c.is_file()) {
        return Err(format!(
            "{}: SLURM_CONF names {}, which is not a file (set it where the control plane runs)",
            what(),
            conf.display()
        ));
    }
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run {program} (is Slurm's client installed and SLURM_CONF set?): {e}")
        })?;
    let deadline = Instant::now() + CALL_LIMIT;
    // Its output is small (one job's line, a job id): the pipes do not fill before it exits.
    while child.try_wait().map_err(|e| format!("{}: {e}", what()))?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let conf = conf.map_or_else(|| "Slurm's default".into(), |c| c.display().to_string());
            return Err(format!(
                "{}: no answer within {} s (is slurmctld up? configuration: {conf})",
                what(),
                CALL_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().map_err(|e| format!("{}: {e}", what()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// The name every Slurm job of volt job `uid` has.
fn job_name(uid: &str) -> String {
    format!("volt-{uid}")
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
        if let Some(cpus) = launch.resources.cpus {
            args.push(format!("--cpus-per-task={}", cpus.ceil().max(1.0) as u64));
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

/// A requeued job is held back two minutes (Slurm's own delay against requeue loops);
/// the controller, which counts the attempts, runs the one it adopted now.
fn release(job: &JobInfo) {
    if job.restarts > 0 && job.state == "PENDING" && job.reason == "BeginTime" {
        let _ = slurm("scontrol", &["update", &format!("JobId={}", job.id), "StartTime=now"]);
    }
}

/// A spec's memory (`8GB`, `512M`, `16g`) as Slurm writes it (`8G`, `512M`).
fn slurm_memory(mem: &str) -> String {
    mem.trim().trim_end_matches(['b', 'B']).to_uppercase()
}

/// The batch script of an attempt. A requeued run is attempt `K + SLURM_RESTART_COUNT`:
/// it logs into that attempt's folder, and its nodes get that `VOLT_JOB_ATTEMPT` and a
/// fresh `MASTER_PORT`. Nodes get torchrun-style variables (one process each, as on the
/// other backends); `MASTER_ADDR` is the first host of the allocation, where node 0 runs.
fn batch_script(launch: &Launch, job_dir: &Path) -> String {
    let own = [
        "MASTER_ADDR",
        "MASTER_PORT",
        "RANK",
        "NODE_RANK",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "VOLT_JOB_ATTEMPT",
    ];
    let mut exports: Vec<String> = launch
        .env
        .iter()
        .filter(|(k, _)| !own.contains(&k.as_str()))
        .map(|(k, v)| format!("export {k}={}", shell_quote(v)))
        .collect();
    if let Some(path) = own_path().and_then(|p| p.into_string().ok()) {
        exports.push(format!("export PATH={}", shell_quote(&path)));
    }
    // Each task says where it runs and beats while it runs (the controller notices a
    // lost node from its silence within seconds; Slurm takes SlurmdTimeout). The beat
    // ignores SIGTERM, so a node being stopped still beats until its step ends, and only
    // a lost one falls silent. Slurm signals every process of a step, and kills what is
    // left once the task's shell exits: the shell catches SIGTERM (its children do not
    // inherit a caught signal), so it outlives `run` — volt fit writing `last` — and
    // records its exit code.
    let node = format!(
        "export RANK=$SLURM_PROCID NODE_RANK=$SLURM_PROCID LOCAL_RANK=0 LOCAL_WORLD_SIZE=1\n\
         node=\"$VOLT_ATTEMPT_DIR/node-$SLURM_PROCID\"\n\
         export VOLT_EXIT_FILE=\"$node.exit\"\n\
         hostname > \"$node.host\"\n\
         (trap '' TERM; while :; do date +%s%N > \"$node.alive\"; sleep 1; done) &\n\
         beat=$!\n\
         trap 'kill -KILL $beat 2>/dev/null' EXIT\n\
         trap 'signalled=1' TERM\n\
         {}",
        // A run that ends well after Slurm's SIGTERM stopped early (a time limit, a
        // preemption, an admin's scancel; a requeue is told apart by its restart count).
        node_script_then(
            launch.setup.as_deref(),
            &launch.run,
            "if [ \"$code\" = 0 ] && [ -n \"${signalled:-}\" ]; then code=143; fi\n"
        )
    );
    format!(
        "#!/bin/bash\n\
         # volt job {uid}, attempt {attempt} (and one more at each requeue by Slurm).\n\
         {exports}\n\
         attempt=$(( {attempt} + ${{SLURM_RESTART_COUNT:-0}} ))\n\
         export VOLT_JOB_ATTEMPT=$attempt\n\
         export VOLT_ATTEMPT_DIR={job_dir}/attempt-$attempt\n\
         mkdir -p \"$VOLT_ATTEMPT_DIR\"\n\
         echo \"volt: attempt $attempt on $SLURM_JOB_NODELIST\"\n\
         MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n\
         export MASTER_ADDR\n\
         # A port nothing listens on at node 0 (this script runs there), fresh per run.\n\
         port=$(( 15000 + (SLURM_JOB_ID * 16 + ${{SLURM_RESTART_COUNT:-0}}) % 40000 ))\n\
         for _ in $(seq 100); do\n\
           (exec 3<>\"/dev/tcp/127.0.0.1/$port\") 2>/dev/null || break\n\
           port=$(( port + 1 ))\n\
         done\n\
         export MASTER_PORT=$port\n\
         exec srun --kill-on-bad-exit=1{cpus} --open-mode=append --output=\"$VOLT_ATTEMPT_DIR/node-%t.log\" \\\n  \
           sh -c {node}\n",
        // srun takes no --cpus-per-task from sbatch's (Slurm 22.05 to 23.02).
        cpus = launch.resources.cpus.map_or_else(String::new, |c| format!(" --cpus-per-task={}", c.ceil().max(1.0) as u64)),
        uid = launch.job_uid,
        attempt = launch.attempt,
        exports = exports.join("\n"),
        job_dir = shell_quote(&job_dir.display().to_string()),
        node = shell_quote(&node),
    )
}

fn exit_code(file: &Path) -> Option<i64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
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
            _ if exit_code(&h.exit_file).is_some() => Observed::Exited(exit_code(&h.exit_file).unwrap_or(0)),
            Some(job) => Observed::Lost(format!(
                "Slurm job {} ended {} ({}) without this node's exit code (killed, or its node failed)",
                job.id, job.state, job.reason
            )),
            None => {
                Observed::Lost(format!("Slurm no longer knows job {} and the node left no exit code", h.job))
            }
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
        self.forget(h.job);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_line_of_scontrol_is_read() {
        let line = "JobId=12 JobName=volt-3-17 UserId=root(0) GroupId=root(0) Priority=1 \
            JobState=PENDING Reason=BeginTime Dependency=(null) Requeue=1 Restarts=2 \
            BatchFlag=1 NodeList=(null) Comment=volt-attempt=4 StdErr=/x";
        let job = parse_job(line).expect("parsed");
        assert_eq!(
            job,
            JobInfo {
                id: 12,
                name: "volt-3-17".into(),
                state: "PENDING".into(),
                reason: "BeginTime".into(),
                restarts: 2,
                base: Some(4),
                nodes: String::new(),
            }
        );
        assert_eq!(job.attempt(), Some(6));
        assert!(job.active());
        let done = parse_job("JobId=9 JobState=NODE_FAIL Restarts=0 NodeList=n[1-2]").expect("parsed");
        assert!(!done.active());
        assert_eq!((done.nodes.as_str(), done.attempt()), ("n[1-2]", None));
        assert_eq!(parse_job("no job here"), None);
    }

    #[test]
    fn the_batch_script_is_sound_shell_whatever_the_paths_and_values() {
        let odd = PathBuf::from("/tmp/a b/it's \"odd\"/$HOME/`x`");
        let launch = Launch {
            rank: 0,
            host: None,
            job_uid: "7-1".into(),
            attempt: 2,
            num_nodes: 2,
            resources: volt_config::Resources { cpus: Some(1.5), ..Default::default() },
            partition: None,
            workdir: odd.clone(),
            setup: Some("echo 'set up'".into()),
            run: "echo \"$RANK\" && exit 3".into(),
            env: vec![("ODD".into(), "a 'b' \"c\" $d `e`".into())],
            log: odd.join("attempt-2/node-0.log"),
            exit_file: odd.join("attempt-2/node-0.exit"),
        };
        let script = batch_script(&launch, &odd);
        for shell in ["bash", "sh"] {
            let out = Command::new(shell).arg("-n").arg("-c").arg(&script).output().expect(shell);
            assert!(out.status.success(), "{shell}: {}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
        assert!(script.contains("--cpus-per-task=2"), "{script}");
        assert!(script.contains("attempt=$(( 2 + ${SLURM_RESTART_COUNT:-0} ))"), "{script}");
    }

    #[test]
    fn memory_is_written_the_way_slurm_reads_it() {
        for (spec, slurm) in [("8GB", "8G"), ("512M", "512M"), ("16g", "16G"), ("100", "100")] {
            assert_eq!(slurm_memory(spec), slurm);
        }
    }
}
