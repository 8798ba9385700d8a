//! Backends start a job's nodes, observe them and signal them; scheduling, retries and
//! state live in the controller, once. A node is found again from its handle (JSON in
//! the store), also by a controller that restarted since it started the node.
pub mod local;
pub mod slurm;
pub mod ssh;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use volt_config::{Host, Resources};

/// What a backend sees of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Still running.
    Running,
    /// It exited with this code.
    Exited(i64),
    /// It is gone without an exit code; why, in words.
    Lost(String),
}

/// How a node is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: volt fit writes `last` and exits.
    Term,
    /// SIGKILL.
    Kill,
}

/// Why an attempt cannot start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unplaced {
    /// Not enough hosts are free and answering: the job waits, `pending`.
    Wait(String),
    /// A host refuses the job's credentials: waiting would not help.
    Refused(String),
}

/// One node to start.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Its node rank.
    pub rank: usize,
    /// The host it runs on (the ssh backend's; none for local processes).
    pub host: Option<Host>,
    /// What tells the job apart from every other (`VOLT_JOB_UID`): its folders on hosts.
    pub job_uid: String,
    /// Its attempt.
    pub attempt: i64,
    /// How many nodes the attempt has.
    pub num_nodes: usize,
    /// What each node needs (Slurm asks for it; the other backends do not check).
    pub resources: Resources,
    /// slurm: the partition.
    pub partition: Option<String>,
    /// The folder it runs in (for the ssh backend: the control plane's copy, sent to the host).
    pub workdir: PathBuf,
    /// `setup`, then `run`, as shell commands.
    pub setup: Option<String>,
    /// The command.
    pub run: String,
    /// Its environment on top of the backend's (rendezvous variables, the spec's `env`).
    pub env: Vec<(String, String)>,
    /// Where its output goes.
    pub log: PathBuf,
    /// Where it writes its exit code when it ends.
    pub exit_file: PathBuf,
}

/// A kind of machines nodes run on.
pub trait Backend: Send + Sync {
    /// Hosts for an attempt of `num_nodes` nodes out of `fleet`, none of them in `busy`
    /// (hosts running other jobs' nodes) and each answering now; or why not. By default
    /// none: the nodes run here, or where the backend's scheduler puts them.
    fn place(
        &self,
        num_nodes: usize,
        _fleet: &[Host],
        _busy: &[String],
    ) -> Result<Vec<Option<Host>>, Unplaced> {
        Ok(vec![None; num_nodes])
    }
    /// The address node 0 is reached at (`MASTER_ADDR`) when it runs on `host`; `None`
    /// when the nodes find it, and a free port, themselves (Slurm's batch script).
    fn master_addr(&self, host: Option<&Host>) -> Option<String>;
    /// Starts a node; the host it runs on, and its handle.
    fn start(&self, launch: &Launch) -> std::io::Result<(String, String)>;
    /// What the node of `handle` is doing.
    fn observe(&self, handle: &str) -> Observed;
    /// Signals the node of `handle` and everything it started; `Err` says why its host
    /// could not be reached (the node is then lost with it).
    fn stop(&self, handle: &str, how: Stop) -> Result<(), String>;
    /// Whether nothing the node of `handle` started runs any more (its shell may be gone
    /// while what it started lives on).
    fn stopped(&self, handle: &str) -> bool {
        self.observe(handle) != Observed::Running
    }
    /// Brings the files node 0 of `handle` wrote in its workdir since the last call to the
    /// control plane (at most every second, or now when it is the `last` call, once the
    /// node has ended); nothing for local nodes, which write there already.
    fn collect(&self, _handle: &str, _last: bool) {}
    /// Makes sure nothing of job `job_uid` runs any more, once it failed or was
    /// cancelled (Slurm may have requeued a run the controller no longer tracks).
    fn end(&self, _job_uid: &str) {}
}

/// The exit code a node's script wrote to `file` (see `node_script`), once it has.
pub fn exit_code(file: &Path) -> Option<i64> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// `PATH` with the folder of this binary first: `run = "volt fit ..."` means this volt.
pub fn own_path() -> Option<std::ffi::OsString> {
    let dir = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&path))).ok()
}

/// Packs folder `dir` with tar (leaving out `exclude`, a path inside it) into the
/// standard input of `into` (which unpacks it, here or on a host); `into`'s output.
/// Fails, with both sides' words, if either side does.
pub fn send_tree(dir: &Path, exclude: Option<&Path>, into: &mut Command) -> std::io::Result<Output> {
    let mut pack = Command::new("tar");
    pack.arg("-C").arg(dir).args(["-cf", "-"]);
    if let Some(inside) = exclude {
        pack.arg(format!("--exclude=./{}", inside.display()));
    }
    let mut pack = pack.arg(".").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    into.stdin(pack.stdout.take().map_or_else(Stdio::null, Stdio::from));
    let unpacked = into.output()?;
    let packed = pack.wait_with_output()?;
    if !packed.status.success() || !unpacked.status.success() {
        return Err(std::io::Error::other(format!(
            "cannot copy {}: {}{}",
            dir.display(),
            String::from_utf8_lossy(&packed.stderr).trim(),
            String::from_utf8_lossy(&unpacked.stderr).trim()
        )));
    }
    Ok(unpacked)
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The shell script a node runs: `setup` then `run`, each in a subshell, and then its exit
/// code written atomically to `$VOLT_EXIT_FILE`, so that whoever observes the node later
/// (a restarted controller, too) knows how it ended; a node killed with its shell leaves
/// none, and is lost.
pub fn node_script(setup: Option<&str>, run: &str) -> String {
    node_script_then(setup, run, "")
}

/// `node_script` with `then` run once the exit code is in `$code`, before it is written.
pub fn node_script_then(setup: Option<&str>, run: &str, then: &str) -> String {
    let body = match setup {
        Some(s) => format!("(\n{s}\n) && (\n{run}\n)"),
        None => format!("(\n{run}\n)"),
    };
    format!(
        "{body}\ncode=$?\n{then}printf '%s\\n' \"$code\" > \"$VOLT_EXIT_FILE.tmp\" && mv -f \"$VOLT_EXIT_FILE.tmp\" \"$VOLT_EXIT_FILE\"\nexit $code\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_reach_the_shell_unchanged() {
        for word in ["plain", "it's", "a b\tc", "$HOME `x` \"q\" \\ ;|&", "", "'''"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .expect("sh");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word);
        }
    }

    #[test]
    fn a_node_script_writes_its_exit_code_and_keeps_it() {
        let dir = std::env::temp_dir().join(format!("volt-node-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let exit = dir.join("node.exit");
        for (setup, run, code) in
            [(None, "exit 7", 7), (Some("false"), "exit 0", 1), (Some("true"), "true", 0)]
        {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(node_script(setup, run))
                .env("VOLT_EXIT_FILE", &exit)
                .status()
                .expect("sh");
            assert_eq!(status.code(), Some(code));
            assert_eq!(std::fs::read_to_string(&exit).expect("exit file").trim(), code.to_string());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
