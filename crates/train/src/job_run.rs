//! `fit` under `volt job`: the control plane sets `VOLT_JOB_UID` (and `VOLT_JOB_ID`,
//! `VOLT_JOB_ATTEMPT`) on every node. Such a run keeps one version folder for the whole
//! job, marked with the job's uid, and each attempt resumes from that folder's `last`;
//! the first attempt, with no checkpoint yet, starts fresh. A run given `ckpt_path` or a
//! `version` of its own decides for itself.
use crate::checkpoint::{parse_version, LAST_NAME};
use std::path::{Path, PathBuf};

/// The file in a version folder that names the job writing it.
pub const MARKER: &str = "volt-job";

/// The job this process runs under, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRun {
    /// What tells this job apart from every other (`VOLT_JOB_UID`).
    pub uid: String,
    /// Its attempt (`VOLT_JOB_ATTEMPT`).
    pub attempt: u32,
}

impl JobRun {
    /// From the environment the control plane sets.
    pub fn from_env() -> Option<JobRun> {
        let uid = std::env::var("VOLT_JOB_UID").ok().filter(|u| !u.is_empty())?;
        let attempt = std::env::var("VOLT_JOB_ATTEMPT").ok().and_then(|a| a.parse().ok()).unwrap_or(1);
        Some(JobRun { uid, attempt })
    }

    /// The version folder an earlier attempt of this job made under `experiment_dir`.
    pub fn version_dir(&self, experiment_dir: &Path) -> Option<PathBuf> {
        std::fs::read_dir(experiment_dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| parse_version(&e.file_name().to_string_lossy()).is_some())
            .map(|e| e.path())
            .find(|dir| std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == self.uid))
    }

    /// The checkpoint to resume from: `last` of the job's folder `dir`, if one was written.
    pub fn last_in(dir: &Path) -> Option<PathBuf> {
        let last = dir.join("checkpoints").join(LAST_NAME);
        last.is_file().then_some(last)
    }

    /// Marks `dir` as this job's folder.
    pub fn mark(&self, dir: &Path) -> std::io::Result<()> {
        volt_formats::atomic::write_atomic(&dir.join(MARKER), format!("{}\n", self.uid).as_bytes())
    }
}
