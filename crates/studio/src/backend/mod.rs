//! Backends start a job's nodes, observe them and signal them; scheduling, retries and
//! state live in the controller, once. A node is found again from its handle (JSON in
//! the store), also by a controller that restarted since it started the node.
pub mod local;

use std::path::PathBuf;

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

/// One node to start.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Its node rank.
    pub rank: usize,
    /// The folder it runs in.
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
    /// The address node 0 is reached at (`MASTER_ADDR`), for a job of `num_nodes`.
    fn master_addr(&self) -> String;
    /// Starts a node; the host it runs on, and its handle.
    fn start(&self, launch: &Launch) -> std::io::Result<(String, String)>;
    /// What the node of `handle` is doing.
    fn observe(&self, handle: &str) -> Observed;
    /// Signals the node of `handle` and everything it started.
    fn stop(&self, handle: &str, how: Stop);
}

/// The shell script a node runs: `setup` then `run`, each in a subshell, and then its exit
/// code written atomically to `$VOLT_EXIT_FILE`, so that whoever observes the node later
/// (a restarted controller, too) knows how it ended; a node killed with its shell leaves
/// none, and is lost.
pub fn node_script(setup: Option<&str>, run: &str) -> String {
    let body = match setup {
        Some(s) => format!("(\n{s}\n) && (\n{run}\n)"),
        None => format!("(\n{run}\n)"),
    };
    format!(
        "{body}\ncode=$?\nprintf '%s\\n' \"$code\" > \"$VOLT_EXIT_FILE.tmp\" && mv -f \"$VOLT_EXIT_FILE.tmp\" \"$VOLT_EXIT_FILE\"\nexit $code\n"
    )
}
