//! Who this process is in a data-parallel job: read from the variables of torchrun,
//! Slurm or Open MPI, or made up by volt's own launcher, which starts the other local
//! ranks as copies of this program (as Lightning's subprocess launcher does).
use crate::error::{Error, Result};
use std::process::{Child, Command, ExitStatus};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// This process's place in the job and where the ranks meet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEnv {
    /// Global rank.
    pub rank: usize,
    /// Rank among the processes of this node.
    pub local_rank: usize,
    /// Number of ranks in the job.
    pub world_size: usize,
    /// Index of this node.
    pub node_rank: usize,
    /// Host of the rendezvous store.
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// A launcher hosts the store (torchrun's agent), so rank 0 must not.
    pub store_is_external: bool,
    /// Where the values came from, for messages.
    pub source: &'static str,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: FromStr>(name: &str) -> Result<Option<T>> {
    var(name)
        .map(|v| {
            v.trim().parse().map_err(|_| {
                Error::Config(format!("environment variable {name}={v:?} is not a valid number"))
            })
        })
        .transpose()
}

fn required<T: FromStr>(name: &str, source: &str) -> Result<T> {
    parse(name)?.ok_or_else(|| Error::Config(format!("{source}: environment variable {name} is not set")))
}

/// The first host of a Slurm node list: `node[07-09,12],gpu1` gives `node07`.
pub fn first_slurm_host(nodelist: &str) -> String {
    let first = nodelist.split(',').next().unwrap_or_default();
    match first.split_once('[') {
        Some((prefix, range)) => {
            let n: String = range.chars().take_while(|c| c.is_ascii_digit()).collect();
            format!("{prefix}{n}")
        }
        None => first.to_owned(),
    }
}

impl ClusterEnv {
    /// The job described by the environment, if this process was started as one of its
    /// ranks: torchrun-style `RANK`/`WORLD_SIZE`/…, Open MPI's `OMPI_COMM_WORLD_*` or
    /// Slurm's `SLURM_*` (checked in that order).
    pub fn detect() -> Result<Option<ClusterEnv>> {
        if var("RANK").is_some() && var("WORLD_SIZE").is_some() {
            let source = "torchrun-style variables";
            let rank: usize = required("RANK", source)?;
            return Ok(Some(ClusterEnv {
                rank,
                local_rank: parse("LOCAL_RANK")?.unwrap_or(0),
                world_size: required("WORLD_SIZE", source)?,
                node_rank: parse("NODE_RANK")?.or(parse("GROUP_RANK")?).unwrap_or(0),
                master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: parse("MASTER_PORT")?.unwrap_or(29500),
                store_is_external: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
                source,
            }));
        }
        if var("OMPI_COMM_WORLD_RANK").is_some() {
            let source = "Open MPI variables";
            let rank: usize = required("OMPI_COMM_WORLD_RANK", source)?;
            let world_size: usize = required("OMPI_COMM_WORLD_SIZE", source)?;
            let local_size: usize = parse("OMPI_COMM_WORLD_LOCAL_SIZE")?.unwrap_or(world_size);
            if world_size > local_size && var("MASTER_ADDR").is_none() {
                return Err(Error::Config(
                    "Open MPI job over several nodes: set MASTER_ADDR to the host of rank 0 \
                     (e.g. mpirun -x MASTER_ADDR=node01)"
                        .into(),
                ));
            }
            return Ok(Some(ClusterEnv {
                rank,
                local_rank: parse("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0),
                world_size,
                node_rank: rank / local_size.max(1),
                master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: parse("MASTER_PORT")?.unwrap_or(29500),
                store_is_external: false,
                source,
            }));
        }
        let interactive = matches!(var("SLURM_JOB_NAME").as_deref(), Some("bash" | "interactive"));
        if var("SLURM_PROCID").is_some() && var("SLURM_NTASKS").is_some() && !interactive {
            let source = "Slurm variables";
            let job_port = var("SLURM_JOB_ID").map(|id| {
                let tail: String = id.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
                15000 + tail.parse::<u16>().unwrap_or(0)
            });
            let nodelist = var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST"));
            return Ok(Some(ClusterEnv {
                rank: required("SLURM_PROCID", source)?,
                local_rank: parse("SLURM_LOCALID")?.unwrap_or(0),
                world_size: required("SLURM_NTASKS", source)?,
                node_rank: parse("SLURM_NODEID")?.unwrap_or(0),
                master_addr: var("MASTER_ADDR")
                    .or_else(|| nodelist.map(|n| first_slurm_host(&n)))
                    .unwrap_or_else(|| "127.0.0.1".into()),
                master_port: parse("MASTER_PORT")?.or(job_port).unwrap_or(29500),
                store_is_external: false,
                source,
            }));
        }
        Ok(None)
    }

    /// Checks that the job the environment describes is the one the config asks for.
    pub fn check(&self, devices: usize, num_nodes: usize) -> Result<()> {
        let expected = devices * num_nodes;
        if self.world_size != expected {
            return Err(Error::Config(format!(
                "{} say WORLD_SIZE={} but trainer.devices={devices} × trainer.num_nodes={num_nodes} = {expected}; \
                 start devices processes per node on num_nodes nodes",
                self.source, self.world_size
            )));
        }
        if self.rank >= self.world_size || self.local_rank >= devices {
            return Err(Error::Config(format!(
                "{} give rank {} (local rank {}) outside a job of {} ranks with {devices} per node",
                self.source, self.rank, self.local_rank, self.world_size
            )));
        }
        Ok(())
    }
}

/// The local ranks this process started, watched so that a lost one can be named.
pub(crate) struct LocalWorkers {
    children: Vec<(usize, Child)>,
}

/// How a process ended, in words.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(9)) => "killed by SIGKILL".into(),
        (None, Some(15)) => "killed by SIGTERM".into(),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "ended".into(),
    }
}

impl LocalWorkers {
    /// Starts local ranks 1.. of `devices` on this node as copies of this program with
    /// torchrun-style variables; returns this process's own place (local rank 0).
    pub fn launch(devices: usize, num_nodes: usize) -> Result<(ClusterEnv, LocalWorkers)> {
        let node_rank: usize = parse("NODE_RANK")?.unwrap_or(0);
        if node_rank >= num_nodes {
            return Err(Error::Config(format!("NODE_RANK={node_rank} but trainer.num_nodes={num_nodes}")));
        }
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let master_port = match parse("MASTER_PORT")? {
            Some(p) => p,
            None if num_nodes == 1 => free_port()?,
            None => {
                return Err(Error::Config(format!(
                    "trainer.num_nodes={num_nodes}: set MASTER_ADDR and MASTER_PORT (and NODE_RANK) \
                     on every node so that the nodes can meet"
                )))
            }
        };
        let world_size = devices * num_nodes;
        let me = ClusterEnv {
            rank: node_rank * devices,
            local_rank: 0,
            world_size,
            node_rank,
            master_addr,
            master_port,
            store_is_external: false,
            source: "volt's launcher",
        };
        let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
        let mut workers = LocalWorkers { children: Vec::new() };
        for local_rank in 1..devices {
            let rank = node_rank * devices + local_rank;
            let child = Command::new(&exe)
                .args(std::env::args_os().skip(1))
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", local_rank.to_string())
                .env("WORLD_SIZE", world_size.to_string())
                .env("LOCAL_WORLD_SIZE", devices.to_string())
                .env("NODE_RANK", node_rank.to_string())
                .env("MASTER_ADDR", &me.master_addr)
                .env("MASTER_PORT", me.master_port.to_string())
                .spawn()
                .map_err(|e| Error::io(&exe, e))?;
            workers.children.push((rank, child));
        }
        Ok((me, workers))
    }

    /// Ranks that have ended, with how.
    pub fn ended(&mut self) -> Vec<(usize, String)> {
        self.children
            .iter_mut()
            .filter_map(|(rank, child)| match child.try_wait() {
                Ok(Some(status)) if !status.success() => Some((*rank, describe_exit(status))),
                _ => None,
            })
            .collect()
    }

    /// Waits up to `grace` for every started rank, then kills what is left; reports
    /// ranks that failed.
    pub fn join(&mut self, grace: Duration) -> Vec<(usize, String)> {
        let deadline = Instant::now() + grace;
        let mut failed = Vec::new();
        for (rank, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            failed.push((*rank, describe_exit(status)));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failed.push((*rank, "still running after the grace period; killed".into()));
                        break;
                    }
                }
            }
        }
        self.children.clear();
        failed
    }
}

impl Drop for LocalWorkers {
    fn drop(&mut self) {
        for (rank, why) in self.join(Duration::from_secs(30)) {
            eprintln!("ddp: rank {rank} (started by this process): {why}");
        }
    }
}

/// A port the OS says is free now (single-node jobs only; a tiny race is accepted, as
/// in Lightning's launcher).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| Error::io("127.0.0.1:0", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_slurm_host_takes_the_first_of_ranges_and_lists() {
        assert_eq!(first_slurm_host("node[07-09,12],gpu1"), "node07");
        assert_eq!(first_slurm_host("gpu3,gpu4"), "gpu3");
        assert_eq!(first_slurm_host("solo"), "solo");
        assert_eq!(first_slurm_host("a-b[001-004]"), "a-b001");
    }

    #[test]
    fn a_world_size_that_disagrees_with_the_config_is_refused_by_name() {
        let env = ClusterEnv {
            rank: 0,
            local_rank: 0,
            world_size: 3,
            node_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
            store_is_external: false,
            source: "Slurm variables",
        };
        let e = env.check(2, 1).unwrap_err().to_string();
        assert!(e.contains("WORLD_SIZE=3") && e.contains("trainer.devices=2"), "{e}");
        assert!(env.check(3, 1).is_ok());
    }
}
