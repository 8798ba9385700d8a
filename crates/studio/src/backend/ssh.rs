//! Nodes on SSH hosts, through the system `ssh` client (one multiplexed connection per
//! host, so that a look costs milliseconds). A node's attempt gets the control plane's
//! copy of the workdir (the spec's folder, plus what node 0 wrote in earlier attempts)
//! in `~/.volt-jobs/UID/work` on its host, and runs there in a session of its own,
//! detached, so that an SSH drop does not kill it. Each look brings back the new part
//! of the node's log, and node 0's new files (its checkpoints and metrics), so that a
//! lost host loses nothing already collected and the next attempt, wherever it runs,
//! starts from them. A host that stops answering for [`LOST_AFTER`] loses its nodes.
use super::{node_script, send_tree, shell_quote, Backend, Launch, Observed, Stop, Unplaced};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use volt_config::Host;

/// How long a host may fail to answer before its nodes count as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(3);
/// How often node 0's new files are brought back.
const PULL_EVERY: Duration = Duration::from_secs(1);

/// The ssh backend.
pub struct Ssh {
    /// Its known_hosts file and connection sockets.
    dir: PathBuf,
    /// When each node's host first failed to answer, in the current silence.
    silent: Mutex<HashMap<String, Instant>>,
    /// When node 0's files were last brought back, and the host's clock then.
    pulled: Mutex<HashMap<String, (Instant, String)>>,
}

#[derive(Serialize, Deserialize)]
struct Handle {
    host: Host,
    pid: i64,
    /// The process's start time on its host (`/proc/PID/stat`, field 22).
    start: String,
    rank: usize,
    /// `~/.volt-jobs/UID`, relative to the host user's home.
    base: String,
    attempt: i64,
    /// Where its log is copied to, on the control plane.
    local_log: PathBuf,
    /// The control plane's copy of the workdir, where node 0's files are brought back.
    local_work: PathBuf,
}

impl Handle {
    fn attempt_dir(&self) -> String {
        format!("{}/attempt-{}", self.base, self.attempt)
    }
}

impl Ssh {
    /// The backend, keeping its files in `dir` (made now; ssh needs it for its sockets).
    pub fn new(dir: PathBuf) -> Ssh {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::error!("the ssh backend's folder {}: {e}", dir.display());
        }
        Ssh { dir, silent: Mutex::default(), pulled: Mutex::default() }
    }

    /// `ssh` to `host`, running `script` in its user's login shell.
    fn ssh(&self, host: &Host, script: &str) -> Command {
        let mut c = Command::new("ssh");
        for option in [
            "BatchMode=yes".to_owned(),
            "ConnectTimeout=3".into(),
            "StrictHostKeyChecking=accept-new".into(),
            format!("UserKnownHostsFile={}", self.dir.join("known_hosts").display()),
            "ControlMaster=auto".into(),
            format!("ControlPath={}/cm-%C", self.dir.display()),
            "ControlPersist=30".into(),
            "ServerAliveInterval=1".into(),
            "ServerAliveCountMax=3".into(),
            "LogLevel=ERROR".into(),
        ] {
            c.arg("-o").arg(option);
        }
        if let Some(port) = host.port {
            c.arg("-p").arg(port.to_string());
        }
        if let Some(key) = &host.identity_file {
            c.arg("-i").arg(key);
        }
        c.arg(match &host.user {
            Some(user) => format!("{user}@{}", host.address),
            None => host.address.clone(),
        });
        c.arg(script).stdin(Stdio::null());
        c
    }

    fn run(&self, host: &Host, script: &str) -> std::io::Result<Output> {
        self.ssh(host, script).output()
    }

    /// Whether `host` answers now: `Ok(false)` when it does not, `Err` when it refuses
    /// the credentials (with ssh's words).
    fn answers(&self, host: &Host) -> Result<bool, String> {
        match self.run(host, "true") {
            Ok(o) if o.status.success() => Ok(true),
            Ok(o) => {
                let said = String::from_utf8_lossy(&o.stderr).trim().to_owned();
                if said.contains("Permission denied") || said.contains("Host key verification failed") {
                    Err(said)
                } else {
                    Ok(false)
                }
            }
            Err(_) => Ok(false),
        }
    }

    /// Counts a failed look at `key`'s host: lost once it has been silent long enough.
    fn silence(&self, key: &str, host: &Host, why: &str) -> Observed {
        let mut silent = self.silent.lock().unwrap_or_else(|e| e.into_inner());
        let since = *silent.entry(key.to_owned()).or_insert_with(Instant::now);
        if since.elapsed() >= LOST_AFTER {
            Observed::Lost(format!(
                "host {} ({}) has not answered for {}s: {why}",
                host.name,
                host.address,
                since.elapsed().as_secs()
            ))
        } else {
            Observed::Running
        }
    }

    /// Brings node 0's files written since the last time into the control plane's copy.
    fn pull(&self, key: &str, h: &Handle, now: bool) {
        let since = self.pulled.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        if !now && since.as_ref().is_some_and(|(at, _)| at.elapsed() < PULL_EVERY) {
            return;
        }
        // The host's clock first (the next pull's starting point, a second early so that
        // nothing written in the same second is missed), then a tar of what is newer.
        let newer = since.map_or_else(String::new, |(_, t)| format!("-newermt @{t}"));
        let script = format!(
            "cd {work} && echo $(($(date +%s) - 1)) && find . -type f {newer} ! -name '*.tmp*' -print0 | tar --null -T - -cf -",
            work = shell_quote(&format!("{}/work", h.base)),
        );
        let Ok(out) = self.run(&h.host, &script) else { return };
        if !out.status.success() {
            return;
        }
        let Some(newline) = out.stdout.iter().position(|&b| b == b'\n') else { return };
        let clock = String::from_utf8_lossy(&out.stdout[..newline]).trim().to_owned();
        let tar = &out.stdout[newline + 1..];
        let extracted = Command::new("tar")
            .arg("-xf")
            .arg("-")
            .arg("-C")
            .arg(&h.local_work)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut t| {
                if let Some(mut stdin) = t.stdin.take() {
                    stdin.write_all(tar)?;
                }
                t.wait()
            });
        if extracted.is_ok_and(|s| s.success()) {
            self.pulled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.to_owned(), (Instant::now(), clock));
        }
    }
}

impl Backend for Ssh {
    fn place(
        &self,
        num_nodes: usize,
        fleet: &[Host],
        busy: &[String],
    ) -> Result<Vec<Option<Host>>, Unplaced> {
        let mut chosen = Vec::new();
        let mut silent = Vec::new();
        for host in fleet.iter().filter(|h| !busy.contains(&h.name)) {
            if chosen.len() == num_nodes {
                break;
            }
            match self.answers(host) {
                Ok(true) => chosen.push(Some(host.clone())),
                Ok(false) => silent.push(host.name.as_str()),
                Err(said) => {
                    return Err(Unplaced::Refused(format!(
                        "host {} ({}) refuses the login: {said}",
                        host.name, host.address
                    )))
                }
            }
        }
        if chosen.len() == num_nodes {
            return Ok(chosen);
        }
        let taken: Vec<&str> =
            fleet.iter().filter(|h| busy.contains(&h.name)).map(|h| h.name.as_str()).collect();
        let mut why = format!("waiting for hosts: {num_nodes} needed, {} free and answering", chosen.len());
        if !silent.is_empty() {
            why.push_str(&format!("; not answering: {}", silent.join(", ")));
        }
        if !taken.is_empty() {
            why.push_str(&format!("; running other jobs: {}", taken.join(", ")));
        }
        Err(Unplaced::Wait(why))
    }

    fn master_addr(&self, host: Option<&Host>) -> Option<String> {
        Some(host.map_or_else(|| "127.0.0.1".into(), |h| h.address.clone()))
    }

    fn start(&self, launch: &Launch) -> std::io::Result<(String, String)> {
        let host = launch.host.clone().ok_or_else(|| std::io::Error::other("an ssh node needs a host"))?;
        let base = format!(".volt-jobs/{}", launch.job_uid);
        let attempt_dir = format!("{base}/attempt-{}", launch.attempt);
        let exports: Vec<String> = launch
            .env
            .iter()
            .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        let rank = launch.rank;
        // The node's shell leads a session of its own (setsid in a non-interactive shell
        // keeps its pid): `kill -- -PID` reaches all it started.
        let then = format!(
            "mkdir -p {a}\ncd {w}\nexport {exports} VOLT_EXIT_FILE=\"$HOME/{attempt_dir}/node-{rank}.exit\"\n\
             setsid sh -c {script} > \"$HOME/{attempt_dir}/node-{rank}.log\" 2>&1 < /dev/null &\n\
             pid=$!\necho \"$pid $(sed 's/.*) //' /proc/$pid/stat | cut -d' ' -f20)\"\n",
            a = shell_quote(&attempt_dir),
            w = shell_quote(&format!("{base}/work")),
            exports = exports.join(" "),
            script = shell_quote(&node_script(launch.setup.as_deref(), &launch.run)),
        );
        // The workdir goes first, through tar on the same connection.
        let script = format!(
            "set -e\nmkdir -p {w}\ntar -xf - -C {w}\n{then}",
            w = shell_quote(&format!("{base}/work"))
        );
        let out = send_tree(&launch.workdir, None, &mut self.ssh(&host, &script)).map_err(|e| {
            std::io::Error::other(format!("starting a node on {} ({}): {e}", host.name, host.address))
        })?;
        let said = String::from_utf8_lossy(&out.stdout);
        let mut words = said.split_whitespace();
        let pid = words.next().and_then(|p| p.parse().ok()).ok_or_else(|| {
            std::io::Error::other(format!("the node on {} did not say its pid: {said:?}", host.name))
        })?;
        let start = words.next().unwrap_or_default().to_owned();
        let handle = Handle {
            host: host.clone(),
            pid,
            start,
            rank: launch.rank,
            base,
            attempt: launch.attempt,
            local_log: launch.log.clone(),
            local_work: launch.workdir.clone(),
        };
        let json = serde_json::to_string(&handle).map_err(std::io::Error::other)?;
        Ok((host.name, json))
    }

    fn observe(&self, handle: &str) -> Observed {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else {
            return Observed::Lost(format!("a handle this controller cannot read: {handle}"));
        };
        // The log's new bytes follow the state on the first line.
        let offset = std::fs::metadata(&h.local_log).map_or(0, |m| m.len());
        let dir = shell_quote(&h.attempt_dir());
        let script = format!(
            "e={dir}/node-{r}.exit; \
             if [ -f \"$e\" ]; then echo \"exit $(cat \"$e\")\"; \
             elif [ \"$(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f20)\" = {start} ] \
               && ! grep -q '^State:.*Z' /proc/{pid}/status 2>/dev/null; then echo running; \
             elif [ -f \"$e\" ]; then echo \"exit $(cat \"$e\")\"; \
             else echo gone; fi; \
             tail -c +{from} {dir}/node-{r}.log 2>/dev/null; true",
            r = h.rank,
            pid = h.pid,
            start = shell_quote(&h.start),
            from = offset + 1,
        );
        let out = match self.run(&h.host, &script) {
            Ok(o) if o.status.success() => o,
            Ok(o) => return self.silence(handle, &h.host, String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => return self.silence(handle, &h.host, &e.to_string()),
        };
        self.silent.lock().unwrap_or_else(|e| e.into_inner()).remove(handle);
        let newline = out.stdout.iter().position(|&b| b == b'\n').unwrap_or(out.stdout.len());
        let state = String::from_utf8_lossy(&out.stdout[..newline]).trim().to_owned();
        if let Some(bytes) = out.stdout.get(newline + 1..).filter(|b| !b.is_empty()) {
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&h.local_log) {
                let _ = f.write_all(bytes);
            }
        }
        match state.as_str() {
            "running" => Observed::Running,
            s => match s.strip_prefix("exit ").and_then(|c| c.trim().parse().ok()) {
                Some(code) => Observed::Exited(code),
                None => Observed::Lost(format!(
                    "process {} on {} is gone without an exit code (killed)",
                    h.pid, h.host.name
                )),
            },
        }
    }

    fn stop(&self, handle: &str, how: Stop) -> Result<(), String> {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else { return Ok(()) };
        let sig = match how {
            Stop::Term => "TERM",
            Stop::Kill => "KILL",
        };
        // The whole session, even once its shell is gone: what it started may live on.
        let script = format!("kill -0 -- -{pid} 2>/dev/null && kill -{sig} -- -{pid}; true", pid = h.pid);
        match self.run(&h.host, &script) {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(format!(
                "host {} ({}) does not answer: {}",
                h.host.name,
                h.host.address,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("host {} ({}) does not answer: {e}", h.host.name, h.host.address)),
        }
    }

    fn stopped(&self, handle: &str) -> bool {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else { return true };
        // Zombies do not run (an orphan's waits for init, which may reap it seconds later).
        let script = format!(
            "if command -v ps >/dev/null; then \
               ps -e -o pgid=,stat= | awk -v g={pid} '$1 == g && $2 !~ /^Z/ {{ f = 1 }} END {{ exit !f }}' && echo alive; \
             else kill -0 -- -{pid} 2>/dev/null && echo alive; fi; true",
            pid = h.pid
        );
        // A host that does not answer runs nothing this control plane can reach.
        self.run(&h.host, &script).map_or(true, |o| !String::from_utf8_lossy(&o.stdout).contains("alive"))
    }

    fn collect(&self, handle: &str, last: bool) {
        let Ok(h) = serde_json::from_str::<Handle>(handle) else { return };
        if h.rank == 0 {
            self.pull(handle, &h, last);
        }
    }
}
