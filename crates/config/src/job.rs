//! A job spec (`job.toml` or `job.yaml`): a command run on `num_nodes` nodes of a
//! backend, after SkyPilot's task YAML and dstack's tasks, and the fleet file that lists
//! an SSH backend's hosts. Everything that can be wrong with them is found here, before
//! anything is submitted, and named by its key or file.
use crate::loader::{read_file, resolve, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a job runs, where, and how often it is retried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name (default: the spec file's stem).
    pub name: String,
    /// Nodes the command runs on at once, one process each (default 1).
    pub num_nodes: usize,
    /// The folder the command runs in, relative to the spec file (default: its folder);
    /// copied to each SSH host.
    pub workdir: String,
    /// A shell command run on each node before `run`, once per attempt.
    pub setup: Option<String>,
    /// The shell command each node runs.
    pub run: String,
    /// Environment variables of every node.
    pub env: BTreeMap<String, String>,
    /// What each node needs.
    pub resources: Resources,
    /// When a failed attempt is followed by another.
    pub retry: Retry,
    /// Where the nodes run.
    pub backend: BackendSpec,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: String::new(),
            num_nodes: 1,
            workdir: ".".into(),
            setup: None,
            run: String::new(),
            env: BTreeMap::new(),
            resources: Resources::default(),
            retry: Retry::default(),
            backend: BackendSpec::default(),
        }
    }
}

/// What each node needs of its host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// CPU cores.
    pub cpus: Option<f64>,
    /// Memory, e.g. `"8GB"`.
    pub memory: Option<String>,
    /// Accelerators, e.g. `"H100:8"`.
    pub gpus: Option<String>,
}

/// Attempts after the first: on a lost node, a preemption, or a failure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    /// Attempts that may follow the first (0: a failure is final).
    pub max_restarts: u32,
}

/// The kind of machines a job runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Processes on this machine.
    #[default]
    Local,
    /// Hosts reached over SSH (a fleet file).
    Ssh,
    /// A Slurm cluster (`sbatch`, `squeue`, `scancel`).
    Slurm,
}

impl BackendKind {
    /// The name specs and `volt job ls` use.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Ssh => "ssh",
            BackendKind::Slurm => "slurm",
        }
    }
}

/// Where a job's nodes run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSpec {
    /// `local`, `ssh` or `slurm`.
    pub kind: BackendKind,
    /// ssh: the fleet file listing the hosts, relative to the spec file.
    pub hosts: Option<String>,
    /// slurm: the partition (default: the cluster's default).
    pub partition: Option<String>,
}

/// The hosts an SSH backend may run nodes on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fleet {
    /// Every host, in the order nodes are placed on them.
    pub hosts: Vec<Host>,
}

/// One machine reached over SSH.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Host {
    /// What events and `volt job status` call it (default: its address).
    pub name: String,
    /// Its address, which is also `MASTER_ADDR` when node 0 runs on it.
    pub address: String,
    /// The user to log in as (default: ssh's own default).
    pub user: Option<String>,
    /// The SSH port (default 22).
    pub port: Option<u16>,
    /// The private key to log in with.
    pub identity_file: Option<String>,
}

/// A spec read from its file, checked, with its paths made absolute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadedJob {
    /// The spec, `name` filled in.
    pub spec: JobSpec,
    /// `workdir`, absolute.
    pub workdir: PathBuf,
    /// ssh: the fleet's hosts.
    pub hosts: Vec<Host>,
}

impl JobSpec {
    /// Reads and checks the spec at `path` (TOML, or YAML by extension) and, for ssh, its
    /// fleet file. Errors name the key or the file.
    pub fn load(path: &Path) -> Result<LoadedJob, ConfigError> {
        let mut spec: JobSpec = resolve(read_file(path)?)?;
        let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        if spec.name.is_empty() {
            spec.name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("job").to_owned();
        }
        spec.check()?;
        let workdir = dir.join(if spec.workdir.is_empty() { "." } else { &spec.workdir });
        if !workdir.is_dir() {
            return Err(out_of_range(
                "workdir",
                &spec.workdir,
                format!("{} is not a folder", workdir.display()),
            ));
        }
        let workdir = std::path::absolute(&workdir).unwrap_or(workdir);
        let hosts = match (&spec.backend.kind, &spec.backend.hosts) {
            (BackendKind::Ssh, Some(file)) => Fleet::load(&dir.join(file))?.hosts,
            _ => Vec::new(),
        };
        if spec.backend.kind == BackendKind::Ssh && spec.num_nodes > hosts.len() {
            return Err(out_of_range(
                "num_nodes",
                &spec.num_nodes.to_string(),
                format!(
                    "the fleet {} has {} host{}",
                    spec.backend.hosts.as_deref().unwrap_or_default(),
                    hosts.len(),
                    if hosts.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        Ok(LoadedJob { spec, workdir, hosts })
    }

    /// The checks that need no file: required and ranged keys, and keys that belong to
    /// another backend.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.run.trim().is_empty() {
            return Err(out_of_range(
                "run",
                &format!("{:?}", self.run),
                "the command each node runs is required",
            ));
        }
        if self.num_nodes == 0 {
            return Err(out_of_range("num_nodes", "0", "must be at least 1"));
        }
        if let Some(bad) = self.env.keys().find(|k| !is_env_name(k)) {
            return Err(out_of_range(
                &format!("env.{bad}"),
                &format!("{:?}", self.env[bad]),
                "an environment variable's name is letters, digits and _, not starting with a digit",
            ));
        }
        if let Some(cpus) = self.resources.cpus.filter(|c| !c.is_finite() || *c <= 0.0) {
            return Err(out_of_range("resources.cpus", &cpus.to_string(), "must be more than 0"));
        }
        if let Some(mem) = self.resources.memory.as_deref().filter(|m| !is_memory(m)) {
            return Err(out_of_range(
                "resources.memory",
                &format!("{mem:?}"),
                "a size is a whole number with an optional unit K, M, G or T (\"8GB\", \"512M\")",
            ));
        }
        if let Some(gpus) = self.resources.gpus.as_deref().filter(|g| !is_gpus(g)) {
            return Err(out_of_range(
                "resources.gpus",
                &format!("{gpus:?}"),
                "accelerators are a count, or a type and a count (\"2\", \"H100:8\")",
            ));
        }
        let kind = self.backend.kind;
        match (kind, &self.backend.hosts, &self.backend.partition) {
            (BackendKind::Ssh, None, _) => Err(out_of_range(
                "backend.hosts",
                "absent",
                "the ssh backend needs a fleet file listing its hosts",
            )),
            (BackendKind::Local | BackendKind::Slurm, Some(h), _) => Err(out_of_range(
                "backend.hosts",
                &format!("{h:?}"),
                format!("only the ssh backend takes a fleet file, and this job's is {}", kind.name()),
            )),
            (BackendKind::Local | BackendKind::Ssh, _, Some(p)) => Err(out_of_range(
                "backend.partition",
                &format!("{p:?}"),
                format!("only the slurm backend has partitions, and this job's is {}", kind.name()),
            )),
            _ => Ok(()),
        }
    }
}

impl Fleet {
    /// Reads the fleet file at `path`; every host needs an address, and names are unique.
    pub fn load(path: &Path) -> Result<Fleet, ConfigError> {
        let mut fleet: Fleet = resolve(read_file(path)?)?;
        let in_file = |why: String| ConfigError::File { path: path.to_owned(), why };
        if fleet.hosts.is_empty() {
            return Err(in_file("lists no hosts ([[hosts]] with an address)".into()));
        }
        for (i, h) in fleet.hosts.iter_mut().enumerate() {
            if h.address.trim().is_empty() {
                return Err(in_file(format!("hosts[{i}] has no address")));
            }
            if h.name.is_empty() {
                h.name = h.address.clone();
            }
        }
        let mut names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(in_file(format!("two hosts are named {:?}", w[0])));
        }
        Ok(fleet)
    }
}

/// `8GB`, `512M`, `16g`, `100` (megabytes, as Slurm reads a bare number).
fn is_memory(m: &str) -> bool {
    let m = m.trim();
    let unit = m.trim_start_matches(|c: char| c.is_ascii_digit());
    let digits = &m[..m.len() - unit.len()];
    let unit = unit.strip_suffix(['b', 'B']).unwrap_or(unit);
    !digits.is_empty()
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
        && matches!(unit.to_ascii_uppercase().as_str(), "" | "K" | "M" | "G" | "T")
}

/// `2` or `H100:8`: a count above zero, after a type of letters, digits, `-` and `_`.
fn is_gpus(g: &str) -> bool {
    let (kind, count) = g.rsplit_once(':').unwrap_or(("", g));
    let kind_ok = !g.contains(':')
        || (!kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    kind_ok && count.parse::<u32>().is_ok_and(|n| n > 0)
}

fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn out_of_range(key: &str, value: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::OutOfRange { key: key.to_owned(), value: value.to_owned(), why: why.into() }
}
