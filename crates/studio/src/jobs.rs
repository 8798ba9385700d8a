//! What the store and the API say about jobs: a job, the nodes of its attempts, and the
//! events of its history.
use serde::{Deserialize, Serialize};
use volt_config::LoadedJob;

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for hosts.
    Pending,
    /// An attempt is running.
    Running,
    /// Every node of an attempt exited 0.
    Succeeded,
    /// The last attempt allowed failed.
    Failed,
    /// Stopped by `volt job cancel`.
    Cancelled,
}

impl JobStatus {
    /// The name the store and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobStatus::Pending,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|j| j.as_str() == s)
    }
    /// Whether nothing more will happen to the job.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// A job as the store holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id (`volt job status ID`).
    pub id: i64,
    /// Its name.
    pub name: String,
    /// `local`, `ssh` or `slurm`.
    pub backend: String,
    /// Nodes each attempt runs on.
    pub num_nodes: i64,
    /// Where it is.
    pub status: JobStatus,
    /// The attempt running or last run (0 before the first).
    pub attempt: i64,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// `volt job cancel` asked to stop it.
    pub cancel_requested: bool,
    /// When it was launched (Unix ms).
    pub created_at: i64,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
    /// What it runs.
    pub spec: LoadedJob,
}

impl Job {
    /// Attempts the job may have in all: the first and its restarts.
    pub fn max_attempts(&self) -> i64 {
        1 + i64::from(self.spec.spec.retry.max_restarts)
    }
}

/// Where a node of an attempt is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Its process runs.
    Running,
    /// It exited 0.
    Succeeded,
    /// It exited non-zero.
    Failed,
    /// Its process or its host is gone without an exit status.
    Lost,
    /// The controller stopped it (another node failed, or the job was cancelled).
    Stopped,
}

impl NodeStatus {
    /// The name the store and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Running => "running",
            NodeStatus::Succeeded => "succeeded",
            NodeStatus::Failed => "failed",
            NodeStatus::Lost => "lost",
            NodeStatus::Stopped => "stopped",
        }
    }
    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [
            NodeStatus::Running,
            NodeStatus::Succeeded,
            NodeStatus::Failed,
            NodeStatus::Lost,
            NodeStatus::Stopped,
        ]
        .into_iter()
        .find(|n| n.as_str() == s)
    }
}

/// One node of one attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The job.
    pub job_id: i64,
    /// The attempt (from 1).
    pub attempt: i64,
    /// Its node rank (0 is `MASTER_ADDR`).
    pub rank: i64,
    /// The host it runs on.
    pub host: String,
    /// What its backend needs to find it again (JSON), after a restart of the controller too.
    pub handle: String,
    /// Where it is.
    pub status: NodeStatus,
    /// Its exit code, once it exited.
    pub exit_code: Option<i64>,
    /// When it started (Unix ms).
    pub started_at: i64,
    /// When it ended (Unix ms).
    pub ended_at: Option<i64>,
}

/// Something that happened to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The attempt it happened in.
    pub attempt: i64,
    /// When (Unix ms).
    pub at: i64,
    /// What, in words.
    pub message: String,
}

/// A job with its nodes and events (`volt job status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job.
    pub job: Job,
    /// Its nodes, every attempt's.
    pub nodes: Vec<Node>,
    /// Its history.
    pub events: Vec<Event>,
}
