//! Nodes as processes on this machine: each in a session of its own (so that neither the
//! control plane's death nor its terminal's takes them down), output to its log file,
//! found again by pid and start time (so that a reused pid is never mistaken for it).
use super::{exit_code, node_script, own_path, Backend, Launch, Observed, Stop};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use volt_config::Host;

/// The local backend.
#[derive(Default)]
pub struct Local {
    /// The processes this controller started, reaped as they end.
    children: Mutex<HashMap<i32, Child>>,
}

#[derive(Serialize, Deserialize)]
struct Handle {
    pid: i32,
    /// Clock ticks after boot the process started at (`/proc/PID/stat`, field 22).
    start: u64,
    exit_file: PathBuf,
}

/// The fields of `/proc/PID/stat` after the command name, from the state on (the name
/// may hold spaces and parentheses: they follow the last ')').
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

/// The start time and state of process `pid`, if it exists.
fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat)?;
    let state = fields.first()?.chars().next()?;
    Some((fields.get(19)?.parse().ok()?, state))
}

/// Whether a process of group `pgid` runs (is not a zombie).
fn group_runs(pgid: i32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    procs.filter_map(|e| e.ok()).any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        // State, ppid, pgrp.
        stat_fields(&stat).is_some_and(|f| {
            f.first().is_some_and(|s| *s != "Z") && f.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
    })
}

impl Local {
    fn alive(&self, h: &Handle) -> bool {
        if let Some(child) = self.children.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&h.pid) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
        }
        matches!(proc_stat(h.pid), Some((start, state)) if start == h.start && state != 'Z')
    }
}

impl Local {
    /// Whether any process of the node's session runs (a process group outlives its
    /// leader, and its id is not given to another process while it has members). Zombies
    /// do not run: an orphan's is reaped by init, which some inits do only every few
    /// seconds, and the group exists until then.
    fn group_alive(&self, h: &Handle) -> bool {
        // SAFETY: signal 0 only checks that the group exists.
        self.alive(h) || (unsafe { libc::kill(-h.pid, 0) == 0 } && group_runs(h.pid))
    }
}

impl Backend for Local {
    fn master_addr(&self, _host: Option<&Host>) -> Option<String> {
        Some("127.0.0.1".into())
    }

    fn start(&self, launch: &Launch) -> std::io::Result<(String, String)> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&launch.log)?;
        let mut command = Command::new("sh");
        if let Some(path) = own_path() {
            command.env("PATH", path);
        }
        command
            .arg("-c")
            .arg(node_script(launch.setup.as_deref(), &launch.run))
            .current_dir(&launch.workdir)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env("VOLT_EXIT_FILE", &launch.exit_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let pid = child.id() as i32;
        let start = proc_stat(pid).map_or(0, |(s, _)| s);
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(pid, child);
        let handle = Handle { pid, start, exit_file: launch.exit_file.clone() };
        let json = serde_json::to_string(&handle).map_err(std::io::Error::other)?;
        Ok(("localhost".into(), json))
    }

    fn observe(&self, handle: &str) -> Observed {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else {
            return Observed::Lost(format!("a handle this controller cannot read: {handle}"));
        };
        if let Some(code) = exit_code(&h.exit_file) {
            self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(&h.pid);
            return Observed::Exited(code);
        }
        if self.alive(&h) {
            return Observed::Running;
        }
        // It may have written its code between the two looks.
        match exit_code(&h.exit_file) {
            Some(code) => Observed::Exited(code),
            None => Observed::Lost(format!("process {} is gone without an exit code (killed)", h.pid)),
        }
    }

    fn stopped(&self, handle: &str) -> bool {
        serde_json::from_str::<Handle>(handle).map_or(true, |h| !self.group_alive(&h))
    }

    fn stop(&self, handle: &str, how: Stop) -> Result<(), String> {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else { return Ok(()) };
        // The whole session, even once its shell is gone: what it started may live on.
        if !self.group_alive(&h) {
            return Ok(());
        }
        let sig = match how {
            Stop::Term => libc::SIGTERM,
            Stop::Kill => libc::SIGKILL,
        };
        // SAFETY: kill has no memory effects; the group is the node's own session.
        unsafe {
            libc::kill(-h.pid, sig);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_processes_all_ended_is_stopped_though_not_yet_reaped() {
        let dir = tempfile::tempdir().expect("tmp");
        let starter = Local::default();
        let launch = Launch {
            rank: 0,
            host: None,
            job_uid: "test".into(),
            attempt: 1,
            num_nodes: 1,
            resources: Default::default(),
            partition: None,
            workdir: dir.path().to_owned(),
            setup: None,
            run: "exit 0".into(),
            env: Vec::new(),
            log: dir.path().join("node-0.log"),
            exit_file: dir.path().join("node-0.exit"),
        };
        let (_, handle) = starter.start(&launch).expect("start");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !launch.exit_file.exists() {
            assert!(std::time::Instant::now() < deadline, "the node did not end");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        // A controller that did not start it (a restarted one) does not reap it: the
        // node's shell is a zombie, which is no running process of the node.
        assert!(Local::default().stopped(&handle), "a zombie counts as running");
    }
}
