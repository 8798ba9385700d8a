//! A control plane (`volt studio up`) on a home of its own for the job tests, and the
//! calls they make of it.
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VOLT: &str = env!("CARGO_BIN_EXE_volt");

/// A control plane on its own home, killed when dropped.
pub struct Studio {
    child: Child,
    /// Its `VOLT_HOME`.
    pub home: PathBuf,
    /// Where it listens.
    pub url: String,
}

impl Studio {
    /// Starts one on `home`, and waits until it listens.
    pub fn up(home: &Path) -> Studio {
        Studio::up_with(home, &[])
    }
    /// Starts one on `home` with `env` added to its environment (a Slurm cluster's
    /// `SLURM_CONF`), and waits until it listens.
    pub fn up_with(home: &Path, env: &[(&str, &Path)]) -> Studio {
        let mut child = Command::new(VOLT)
            .args(["studio", "up", "--port", "0"])
            .envs(env.iter().copied())
            .env("VOLT_HOME", home)
            .env_remove("VOLT_STUDIO_URL")
            .stdout(Stdio::piped())
            .spawn()
            .expect("volt studio up");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        let url =
            line.trim().strip_prefix("studio listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
        Studio { child, home: home.to_owned(), url }
    }
    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Studio {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `volt ARGS` against the control plane of `home`.
pub fn volt(home: &Path, args: &[&str]) -> Output {
    Command::new(VOLT)
        .args(args)
        .env("VOLT_HOME", home)
        .env_remove("VOLT_STUDIO_URL")
        .output()
        .expect("run volt")
}

/// What a command printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Launches `spec` (written into `workdir/job.toml`); the job's id.
pub fn launch(home: &Path, workdir: &Path, spec: &str) -> i64 {
    let file = workdir.join("job.toml");
    std::fs::write(&file, spec).expect("spec");
    let out = volt(home, &["job", "launch", file.to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{}", text(&out)))
}

/// `volt job status` as the API's JSON.
/// A job as the API says it (`GET /api/jobs/ID`).
pub fn detail(studio: &Studio, id: i64) -> Value {
    let token = std::fs::read_to_string(studio.home.join("token")).expect("token");
    let out = Command::new("curl")
        .args(["-sf", "-H", &format!("authorization: Bearer {}", token.trim())])
        .arg(format!("{}/api/jobs/{id}", studio.url))
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", text(&out)))
}

/// Waits until `done`, failing the test with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until job `id` ends; its detail.
pub fn wait_final(studio: &Studio, id: i64, limit: Duration) -> Value {
    let mut last = Value::Null;
    wait_until(&format!("job {id} ends"), limit, || {
        last = detail(studio, id);
        matches!(last["job"]["status"].as_str(), Some("succeeded" | "failed" | "cancelled"))
    });
    last
}

/// The last `val_acc` in a run's metrics.csv.
pub fn last_val_acc(version: &Path) -> f64 {
    let csv = std::fs::read_to_string(version.join("metrics.csv")).expect("metrics.csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = header.iter().position(|h| *h == "val_acc").expect("a val_acc column");
    lines.filter_map(|l| l.split(',').nth(col)?.parse::<f64>().ok()).next_back().expect("a val_acc value")
}

/// A job's events, one per line.
pub fn events(d: &Value) -> String {
    d["events"].as_array().map_or_else(String::new, |e| {
        e.iter().filter_map(|e| e["message"].as_str()).collect::<Vec<_>>().join("\n")
    })
}

/// The version folders of an experiment folder, sorted.
pub fn versions(experiment: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(experiment)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The backend's handle (JSON) of node `rank` of `attempt` in a job's detail.
pub fn node_handle(d: &Value, attempt: i64, rank: i64) -> Value {
    let node = d["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["attempt"] == attempt && n["rank"] == rank)
        .unwrap_or_else(|| panic!("no node {rank} of attempt {attempt}: {d}"));
    serde_json::from_str(node["handle"].as_str().expect("handle")).expect("handle json")
}

/// What a succeeded 2-node digits job leaves: one version folder under `experiment`,
/// trained (val_acc ≥ 0.97), node 0's log reporting the fit and node 1's not.
pub fn assert_one_trained_run(studio: &Studio, id: i64, experiment: &Path) {
    assert_eq!(versions(experiment), ["version_0"], "one version folder for both nodes");
    let acc = last_val_acc(&experiment.join("version_0"));
    assert!(acc >= 0.97, "val_acc {acc}");
    let logs = |node: &str| text(&volt(&studio.home, &["job", "logs", &id.to_string(), "--node", node]));
    assert!(logs("0").contains("fit finished"), "{}", logs("0"));
    assert!(!logs("1").contains("fit finished"), "{}", logs("1"));
}

/// The words of job `id`'s row in `volt job ls`.
pub fn ls_row(home: &Path, id: i64) -> Vec<String> {
    let ls = text(&volt(home, &["job", "ls"]));
    let row = ls.lines().find(|l| l.starts_with(&id.to_string())).unwrap_or_else(|| panic!("{ls}"));
    row.split_whitespace().map(str::to_owned).collect()
}

/// Runs a digits job twice in `workdir` on `studio`: untouched (`spec("reference", 0)`),
/// then (`spec("broken", 2)`) with `break_it` applied to attempt 1 once it has written a
/// checkpoint. The second must end on attempt 2, resumed in the same version folder, its
/// events saying `named`, with weights equal to the first's bit for bit. Its id and detail.
pub fn assert_recovers_bitwise(
    studio: &Studio,
    workdir: &Path,
    spec: impl Fn(&str, u32) -> String,
    break_it: impl FnOnce(&Value),
    named: &str,
) -> (i64, Value) {
    let reference = launch(&studio.home, workdir, &spec("reference", 0));
    let d = wait_final(studio, reference, Duration::from_secs(120));
    assert_eq!(d["job"]["status"], "succeeded", "{}", events(&d));

    let id = launch(&studio.home, workdir, &spec("broken", 2));
    let last = workdir.join("broken/lightning_logs/version_0/checkpoints/last.safetensors");
    wait_until("a first checkpoint", Duration::from_secs(60), || last.is_file());
    break_it(&detail(studio, id));
    let d = wait_final(studio, id, Duration::from_secs(120));
    let history = events(&d);
    assert_eq!(d["job"]["status"], "succeeded", "{history}");
    assert_eq!(d["job"]["attempt"], 2, "{history}");
    assert!(history.contains(named), "said why: {history}");
    assert_eq!(versions(&workdir.join("broken/lightning_logs")), ["version_0"]);
    let log = text(&volt(&studio.home, &["job", "logs", &id.to_string(), "--attempt", "2"]));
    assert!(log.contains("resuming from"), "attempt 2 resumed: {log}");
    let want = super::model_tensors(
        &workdir.join("reference/lightning_logs/version_0/checkpoints/last.safetensors"),
    );
    assert_eq!(super::model_tensors(&last), want, "resumed weights equal the untouched run's, bit for bit");
    (id, d)
}

/// Launches a 2-node job (`backend`: the spec's `[backend]` lines, or none) whose nodes
/// note their start in `workdir/starts.txt`, kills the control plane `up` started on
/// `home` once both started, and starts it again: the job must still be running on
/// attempt 1, then succeed on it, re-adopted, each node started once. The new control
/// plane and the job's id.
pub fn assert_readopted(
    home: &Path,
    workdir: &Path,
    backend: &str,
    up: impl Fn() -> Studio,
) -> (Studio, i64) {
    let mut studio = up();
    let spec = format!(
        "num_nodes = 2\nrun = \"echo started $RANK >> starts.txt; sleep 3; echo done $RANK\"\n{backend}"
    );
    let id = launch(home, workdir, &spec);
    let starts = workdir.join("starts.txt");
    wait_until("both nodes start", Duration::from_secs(30), || {
        std::fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() == 2)
    });
    studio.kill();
    // The nodes run on without it.
    std::thread::sleep(Duration::from_millis(500));
    let studio = up();
    let d = detail(&studio, id);
    let state = |d: &Value| (d["job"]["status"].as_str().map(str::to_owned), d["job"]["attempt"].as_i64());
    assert_eq!(state(&d), (Some("running".into()), Some(1)), "{d}");
    let d = wait_final(&studio, id, Duration::from_secs(30));
    assert_eq!(state(&d), (Some("succeeded".into()), Some(1)), "{}", events(&d));
    assert!(events(&d).contains("re-adopted attempt 1"), "{}", events(&d));
    let started = std::fs::read_to_string(&starts).expect("starts");
    assert_eq!(started.lines().count(), 2, "each node started once: {started}");
    (studio, id)
}
