//! Slurm's command-line clients, run with a time limit, and what they say of a job.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `scontrol show job` says of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct JobInfo {
    pub(super) id: u64,
    pub(super) state: String,
    pub(super) reason: String,
    pub(super) restarts: u32,
    /// The attempt it was submitted as (`--comment volt-attempt=K`).
    pub(super) base: Option<i64>,
    pub(super) nodes: String,
}

impl JobInfo {
    /// The attempt its current run is: one more per requeue.
    pub(super) fn attempt(&self) -> Option<i64> {
        self.base.map(|b| b + i64::from(self.restarts))
    }
    /// Whether Slurm still runs it or will (a requeued job is pending again).
    pub(super) fn active(&self) -> bool {
        !is_final(&self.state)
    }
}

pub(super) fn is_final(state: &str) -> bool {
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
pub(super) fn parse_job(line: &str) -> Option<JobInfo> {
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
        state: field("JobState")?,
        reason: field("Reason").unwrap_or_default(),
        restarts: field("Restarts").and_then(|r| r.parse().ok()).unwrap_or(0),
        base: field("Comment").and_then(|c| c.strip_prefix("volt-attempt=").and_then(|a| a.parse().ok())),
        nodes: field("NodeList").filter(|n| n != "(null)").unwrap_or_default(),
    })
}

/// How long a Slurm command may take before the controller gives up on it (a slurmctld
/// that does not answer would otherwise hold up every job's tick).
pub(super) const CALL_LIMIT: Duration = Duration::from_secs(20);

/// Runs a Slurm command; its standard output, or what it said on failure.
pub(super) fn slurm(program: &str, args: &[&str]) -> Result<String, String> {
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
pub(super) fn job_name(uid: &str) -> String {
    format!("volt-{uid}")
}

/// A requeued job is held back two minutes (Slurm's own delay against requeue loops);
/// the controller, which counts the attempts, runs the one it adopted now.
pub(super) fn release(job: &JobInfo) {
    if job.restarts > 0 && job.state == "PENDING" && job.reason == "BeginTime" {
        let _ = slurm("scontrol", &["update", &format!("JobId={}", job.id), "StartTime=now"]);
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
}
