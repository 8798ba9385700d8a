//! `volt job` on the ssh backend, against real sshd "machines" (`scripts/ssh-rig`: one
//! sshd per loopback address, each logging in to a Unix user of its own, so hosts share
//! nothing but the network): a 2-node digits job, rank 0's host lost mid-run and the job
//! finished on the remaining hosts bitwise as an untouched run, and a host that refuses
//! the key. Needs root and openssh-server (`.ci/run` installs it).
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::studio::{detail, events, last_val_acc, launch, text, volt, wait_final, Studio};

const VOLT: &str = env!("CARGO_BIN_EXE_volt");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// SSH hosts on loopback addresses, torn down when dropped.
struct Rig {
    dir: tempfile::TempDir,
}

impl Rig {
    fn up(hosts: usize) -> Rig {
        // A port no other rig of this test run uses.
        let port =
            std::net::TcpListener::bind("127.0.0.2:0").expect("port").local_addr().expect("addr").port();
        let dir = tempfile::Builder::new().prefix("volt-rig").tempdir_in("/tmp").expect("rig dir");
        let out = Command::new(repo().join("scripts/ssh-rig"))
            .args(["up", &dir.path().display().to_string(), &hosts.to_string(), &port.to_string()])
            .env("VOLT_BIN", VOLT)
            .output()
            .expect("scripts/ssh-rig");
        assert!(out.status.success(), "the rig: {}", text(&out));
        Rig { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    /// `KEY=VALUE` lines the hosts need to run volt (its PATH and libtorch).
    fn env(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(self.path().join("env"))
            .expect("rig env")
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect()
    }
    fn lose(&self, host: usize) {
        let out = Command::new(repo().join("scripts/ssh-rig"))
            .args(["lose", &self.path().display().to_string(), &host.to_string()])
            .output()
            .expect("lose");
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/ssh-rig"))
            .args(["down", &self.path().display().to_string()])
            .output();
    }
}

const FIT: &str = "volt fit --model digits-mlp --seed 0 --trainer.strategy ddp --trainer.num_nodes 2 \
    --trainer.max_epochs 40 --trainer.num_threads 1 --trainer.enable_progress_bar false \
    --trainer.enable_model_summary false --trainer.default_root_dir runs \
    --callbacks.model_checkpoint.every_n_train_steps 50";

fn spec(rig: &Rig, fleet: &Path, restarts: u32) -> String {
    let env: Vec<String> = rig.env().iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
    format!(
        "name = \"digits-ssh\"\nnum_nodes = 2\nrun = \"{FIT}\"\n[env]\n{}\n[retry]\nmax_restarts = {restarts}\n\
         [backend]\nkind = \"ssh\"\nhosts = {:?}\n",
        env.join("\n"),
        fleet.display().to_string()
    )
}

#[test]
fn a_two_node_job_runs_on_two_ssh_hosts_and_its_files_come_back() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let id = launch(&studio.home, tmp.path(), &spec(&rig, &rig.path().join("fleet.toml"), 0));
    let d = wait_final(&studio, id, Duration::from_secs(180));
    assert_eq!(d["job"]["status"], "succeeded", "{}", events(&d));
    let hosts: Vec<&str> =
        d["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["host"].as_str()).collect();
    assert_eq!(hosts, ["h1", "h2"], "one node on each host, rank 0 on the first");
    // Node 0's run came back to the control plane: one version folder, trained.
    let copy = studio.home.join(format!("jobs/{id}/work/runs/lightning_logs"));
    assert_eq!(support::studio::versions(&copy), ["version_0"]);
    let acc = last_val_acc(&copy.join("version_0"));
    assert!(acc >= 0.97, "val_acc {acc}");
    assert!(copy.join("version_0/checkpoints/last.safetensors").is_file());
    // Both nodes' logs came back as they were written.
    let logs = |node: &str| text(&volt(&studio.home, &["job", "logs", &id.to_string(), "--node", node]));
    assert!(logs("0").contains("fit finished"), "{}", logs("0"));
    assert!(!logs("1").contains("fit finished"), "{}", logs("1"));
}

#[test]
fn losing_rank_zeros_host_finishes_the_job_on_the_others_bitwise_as_untouched() {
    let rig = Rig::up(3);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let fleet = rig.path().join("fleet.toml");
    let reference = launch(&studio.home, tmp.path(), &spec(&rig, &fleet, 0));
    let d = wait_final(&studio, reference, Duration::from_secs(180));
    assert_eq!(d["job"]["status"], "succeeded", "{}", events(&d));

    let id = launch(&studio.home, tmp.path(), &spec(&rig, &fleet, 2));
    let last = studio
        .home
        .join(format!("jobs/{id}/work/runs/lightning_logs/version_0/checkpoints/last.safetensors"));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !last.is_file() {
        assert!(Instant::now() < deadline, "no checkpoint came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = detail(&studio, id);
    let node0 = d["nodes"].as_array().expect("nodes").iter().find(|n| n["rank"] == 0).expect("node 0");
    assert_eq!(node0["host"], "h1");
    rig.lose(1);
    let d = wait_final(&studio, id, Duration::from_secs(180));
    let history = events(&d);
    assert_eq!(d["job"]["status"], "succeeded", "{history}");
    assert_eq!(d["job"]["attempt"], 2, "{history}");
    assert!(history.contains("node 0 on h1 was lost"), "{history}");
    let second: Vec<&str> = d["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["attempt"] == 2)
        .filter_map(|n| n["host"].as_str())
        .collect();
    assert_eq!(second, ["h2", "h3"], "attempt 2 runs on the hosts that answer");
    let want =
        support::model_tensors(&studio.home.join(format!(
            "jobs/{reference}/work/runs/lightning_logs/version_0/checkpoints/last.safetensors"
        )));
    assert_eq!(support::model_tensors(&last), want, "bit for bit");
}

#[test]
fn a_host_that_refuses_the_key_fails_the_job_naming_it() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    // The same fleet with another key, which no host has authorized.
    let key = tmp.path().join("other_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen");
    assert!(made.status.success(), "{}", text(&made));
    let fleet = std::fs::read_to_string(rig.path().join("fleet.toml")).expect("fleet");
    let original = rig.path().join("id_ed25519").display().to_string();
    let wrong = tmp.path().join("fleet.toml");
    std::fs::write(&wrong, fleet.replace(&original, &key.display().to_string())).expect("fleet");
    let id = launch(&studio.home, tmp.path(), &spec(&rig, &wrong, 3));
    let d = wait_final(&studio, id, Duration::from_secs(60));
    let reason = d["job"]["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(d["job"]["status"], "failed", "{}", events(&d));
    assert!(reason.contains("host h1") && reason.contains("refuses the login"), "{reason}");
    assert!(d["nodes"].as_array().is_some_and(|n| n.is_empty()), "nothing started: {d}");
}

#[test]
fn a_job_waits_pending_while_its_hosts_run_another_then_runs() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let fleet = rig.path().join("fleet.toml").display().to_string();
    let sleeper = |secs: u32| {
        format!("num_nodes = 2\nrun = \"sleep {secs}; echo done $RANK\"\n[backend]\nkind = \"ssh\"\nhosts = {fleet:?}\n")
    };
    let first = launch(&studio.home, tmp.path(), &sleeper(4));
    let deadline = Instant::now() + Duration::from_secs(30);
    while detail(&studio, first)["nodes"].as_array().is_none_or(|n| n.len() < 2) {
        assert!(Instant::now() < deadline, "the first job did not start: {}", detail(&studio, first));
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = launch(&studio.home, tmp.path(), &sleeper(0));
    std::thread::sleep(Duration::from_millis(600));
    let d = detail(&studio, second);
    assert_eq!(d["job"]["status"], "pending", "{d}");
    let reason = d["job"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("running other jobs: h1, h2"), "{reason}");
    let d = wait_final(&studio, second, Duration::from_secs(60));
    assert_eq!(d["job"]["status"], "succeeded", "{}", events(&d));
    assert_eq!(wait_final(&studio, first, Duration::from_secs(10))["job"]["status"], "succeeded");
    let first_end = detail(&studio, first)["nodes"][0]["ended_at"].as_i64().expect("ended");
    let second_start = d["nodes"][0]["started_at"].as_i64().expect("started");
    assert!(second_start >= first_end, "the second job started after the first ended");
    // Said when it changes (both hosts taken, then one), not at every look.
    let waits: Vec<String> =
        events(&d).lines().filter(|l| l.contains("waiting for hosts")).map(str::to_owned).collect();
    let distinct: std::collections::HashSet<&String> = waits.iter().collect();
    assert!(!waits.is_empty() && distinct.len() == waits.len(), "{waits:?}");
}

#[test]
fn on_ssh_hosts_a_restarted_control_plane_re_adopts_its_job_and_cancel_stops_every_node() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    let mut studio = Studio::up(&home);
    let fleet = rig.path().join("fleet.toml").display().to_string();
    let spec = format!(
        "num_nodes = 2\nrun = \"echo started $RANK; sleep 3; echo done $RANK\"\n[backend]\nkind = \"ssh\"\nhosts = {fleet:?}\n"
    );
    let id = launch(&home, tmp.path(), &spec);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&volt(&home, &["job", "logs", &id.to_string(), "--node", "1"])).contains("started 1") {
        assert!(Instant::now() < deadline, "node 1 did not start: {}", detail(&studio, id));
        std::thread::sleep(Duration::from_millis(50));
    }
    studio.kill();
    std::thread::sleep(Duration::from_millis(500));
    let studio = Studio::up(&home);
    let d = wait_final(&studio, id, Duration::from_secs(30));
    assert_eq!(
        (d["job"]["status"].as_str(), d["job"]["attempt"].as_i64()),
        (Some("succeeded"), Some(1)),
        "{}",
        events(&d)
    );
    assert!(events(&d).contains("re-adopted attempt 1"), "{}", events(&d));
    // The log came back whole, once: what was copied before the restart is not copied again.
    let log = text(&volt(&home, &["job", "logs", &id.to_string(), "--node", "1"]));
    assert_eq!(log.trim(), "started 1\ndone 1", "{log:?}");

    // Cancel reaches the hosts: every node stops within 10 s, and its processes are gone.
    let long = spec.replace("sleep 3", "sleep 299");
    let id = launch(&home, tmp.path(), &long);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&volt(&home, &["job", "logs", &id.to_string(), "--node", "1"])).contains("started 1") {
        assert!(Instant::now() < deadline, "node 1 did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let out = volt(&home, &["job", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_final(&studio, id, Duration::from_secs(10));
    assert_eq!(d["job"]["status"], "cancelled");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let sleeping = Command::new("pgrep").args(["-f", "sleep 299"]).output().expect("pgrep");
    assert!(String::from_utf8_lossy(&sleeping.stdout).trim().is_empty(), "a node still sleeps");
}
