//! `volt job` on the local backend through the real binary: a control plane (`volt studio
//! up`, or one the CLI starts), 2-node digits ddp jobs that succeed, lose a node or their
//! rank-0 machine and come back bitwise on attempt 2, a control plane killed and restarted
//! mid-job, retries, cancel, bad specs and the API's token.
mod support;

use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use support::studio::{
    assert_one_trained_run, assert_readopted, assert_recovers_bitwise, detail, events, launch, ls_row,
    node_handle, text, volt, wait_final, wait_until, Studio,
};

const VOLT: &str = env!("CARGO_BIN_EXE_volt");

fn digits_spec(root: &str, extra: &str, max_restarts: u32) -> String {
    format!(
        "name = \"digits-ddp\"\nnum_nodes = 2\n\
         run = \"{VOLT} fit --model digits-mlp --seed 0 --trainer.strategy ddp --trainer.num_nodes 2 \
         --trainer.max_epochs 40 --trainer.num_threads 1 --trainer.enable_progress_bar false \
         --trainer.enable_model_summary false --trainer.default_root_dir {root} {extra}\"\n\
         [retry]\nmax_restarts = {max_restarts}\n"
    )
}

/// Processes whose parent is `pid`.
fn children_of(pid: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").filter_map(|e| e.ok()) {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { continue };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<i64>().ok()) == Some(pid) {
            if let Ok(child) = e.file_name().to_string_lossy().parse() {
                out.push(child);
            }
        }
    }
    out
}

fn node_pid(d: &Value, attempt: i64, rank: i64) -> i64 {
    node_handle(d, attempt, rank)["pid"].as_i64().expect("pid")
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z')))
}

#[test]
fn a_two_node_digits_job_succeeds_in_one_version_folder_and_its_logs_are_kept() {
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let id = launch(&studio.home, tmp.path(), &digits_spec("runs", "", 0));
    let d = wait_final(&studio, id, Duration::from_secs(120));
    assert_eq!(d["job"]["status"], "succeeded", "{}", events(&d));
    assert_eq!(d["job"]["attempt"], 1);
    // Each node's log is kept after the job.
    assert_one_trained_run(&studio, id, &tmp.path().join("runs/lightning_logs"));
    let row = ls_row(&studio.home, id);
    for word in ["digits-ddp", "local", "2", "succeeded", "1"] {
        assert!(row.iter().any(|w| w == word), "{word} in {row:?}");
    }
    let status = text(&volt(&studio.home, &["job", "status", &id.to_string()]));
    assert!(
        status.contains("succeeded, attempt 1 of 1") && status.contains("every node exited 0"),
        "{status}"
    );
}

/// The local backend's side of `assert_recovers_bitwise`.
fn recovers_bitwise(break_it: impl FnOnce(&Value), named: &str) {
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let every = "--callbacks.model_checkpoint.every_n_train_steps 50";
    let spec = |root: &str, restarts| digits_spec(root, every, restarts);
    assert_recovers_bitwise(&studio, tmp.path(), spec, break_it, named);
}

#[test]
fn a_node_killed_mid_epoch_is_restarted_and_the_job_ends_bitwise_as_if_untouched() {
    recovers_bitwise(
        |d| {
            let trainer = children_of(node_pid(d, 1, 1));
            assert!(!trainer.is_empty(), "node 1 runs volt fit");
            for pid in trainer {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        },
        "node 1 on localhost exited with code 137",
    );
}

#[test]
fn losing_rank_zeros_machine_restarts_the_job_from_its_last_checkpoint() {
    recovers_bitwise(
        |d| {
            // The whole of node 0 (its shell and its trainer) dies at once, as with its host.
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(-(node_pid(d, 1, 0) as i32), libc::SIGKILL) };
        },
        "node 0 on localhost was lost",
    );
}

#[test]
fn a_control_plane_killed_mid_job_re_adopts_it_and_nothing_runs_twice() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    let (_studio, id) = assert_readopted(&home, tmp.path(), "", || Studio::up(&home));
    let log = text(&volt(&home, &["job", "logs", &id.to_string(), "--node", "1"]));
    assert_eq!(log.trim(), "done 1");
}

#[test]
fn a_failing_command_is_retried_then_fails_with_its_exit_code() {
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let id = launch(
        &studio.home,
        tmp.path(),
        "num_nodes = 2\nrun = \"echo try; exit $((RANK + 3))\"\n[retry]\nmax_restarts = 2\n",
    );
    let d = wait_final(&studio, id, Duration::from_secs(30));
    let history = events(&d);
    assert_eq!(d["job"]["status"], "failed", "{history}");
    assert_eq!(d["job"]["attempt"], 3, "{history}");
    let reason = d["job"]["reason"].as_str().expect("reason");
    assert!(reason.contains("exited with code 3") && reason.contains("attempt 3 of 3"), "{reason}");
    assert_eq!(history.matches("starting attempt").count(), 2, "{history}");
    let log = text(&volt(&studio.home, &["job", "logs", &id.to_string()]));
    assert_eq!(log.matches("try").count(), 3, "every attempt's log: {log}");
    // --follow on a failed job ends with exit 1 and the reason.
    let out = volt(&studio.home, &["job", "logs", &id.to_string(), "-f"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("attempt 3 of 3"), "{}", text(&out));
}

#[test]
fn cancel_stops_every_node_within_ten_seconds() {
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    let id = launch(&studio.home, tmp.path(), "num_nodes = 2\nrun = \"sleep 300\"\n");
    let mut d = Value::Null;
    wait_until("two nodes run", Duration::from_secs(20), || {
        d = detail(&studio, id);
        d["nodes"].as_array().is_some_and(|n| n.len() == 2)
    });
    let pids: Vec<i64> = (0..2).map(|r| node_pid(&d, 1, r)).collect();
    let sleeps: Vec<i64> = pids.iter().flat_map(|&p| children_of(p)).collect();
    let started = Instant::now();
    let out = volt(&studio.home, &["job", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_final(&studio, id, Duration::from_secs(10));
    assert_eq!(d["job"]["status"], "cancelled");
    wait_until(
        "every process of the job is gone",
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        || pids.iter().chain(&sleeps).all(|&p| !alive(p)),
    );
    // Cancelling what is over is refused, naming its status.
    let out = volt(&studio.home, &["job", "cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already cancelled"), "{}", text(&out));
}

#[test]
fn bad_specs_exit_2_before_anything_is_started() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    for (spec, named) in [
        ("num_node = 2\nrun = \"x\"", "did you mean `num_nodes`?"),
        ("num_nodes = \"two\"\nrun = \"x\"", "`num_nodes`"),
        ("run = \"x\"\nnum_nodes = 3\n[backend]\nkind = \"ssh\"\nhosts = \"fleet.toml\"", "fleet.toml"),
    ] {
        std::fs::write(tmp.path().join("job.toml"), spec).expect("spec");
        let out = volt(&home, &["job", "launch", tmp.path().join("job.toml").to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(2), "{spec}: {}", text(&out));
        assert!(text(&out).contains(named), "{spec}: {}", text(&out));
    }
    assert!(!home.join("studio.json").exists(), "no control plane was started for a bad spec");
}

#[test]
fn the_cli_starts_a_control_plane_when_none_runs_and_the_api_wants_its_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    let id = launch(&home, tmp.path(), "run = \"echo hello from $VOLT_JOB_ID attempt $VOLT_JOB_ATTEMPT\"\n");
    let listening: Value =
        serde_json::from_slice(&std::fs::read(home.join("studio.json")).expect("studio.json")).expect("json");
    let pid = listening["pid"].as_i64().expect("pid");
    let url = listening["url"].as_str().expect("url").to_owned();
    let stop = scopeguard(pid);
    let out = volt(&home, &["job", "logs", &id.to_string(), "-f"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("hello from {id} attempt 1"));
    // A second command finds the same control plane.
    let out = volt(&home, &["job", "ls"]);
    assert!(out.status.success() && text(&out).contains("succeeded"), "{}", text(&out));
    let again: Value =
        serde_json::from_slice(&std::fs::read(home.join("studio.json")).expect("json")).expect("json");
    assert_eq!(again["pid"], pid);
    // Without the token, or with another, the API refuses; health needs none.
    for auth in [vec![], vec!["-H", "authorization: Bearer wrong"]] {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(auth)
            .arg(format!("{url}/api/jobs"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    }
    let out = Command::new("curl").args(["-sf", &format!("{url}/api/health")]).output().expect("curl");
    assert!(out.status.success());
    // A second control plane on the same home refuses to start.
    let out = volt(&home, &["studio", "up", "--port", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("another control plane"), "{}", text(&out));
    drop(stop);
}

/// Kills process `pid` when dropped.
fn scopeguard(pid: i64) -> impl Drop {
    struct Kill(i64);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    Kill(pid)
}

#[test]
fn a_job_being_stopped_holds_up_no_other_job() {
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = Studio::up(&tmp.path().join("home"));
    // It ignores SIGTERM, so cancelling it waits out the whole grace before SIGKILL.
    let stubborn = launch(&studio.home, tmp.path(), "run = \"trap '' TERM; echo up; sleep 298\"\n");
    wait_until("the stubborn job runs", Duration::from_secs(20), || {
        text(&volt(&studio.home, &["job", "logs", &stubborn.to_string()])).contains("up")
    });
    let out = volt(&studio.home, &["job", "cancel", &stubborn.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let quick = launch(&studio.home, tmp.path(), "run = \"echo quick\"\n");
    let q = wait_final(&studio, quick, Duration::from_secs(30));
    let s = wait_final(&studio, stubborn, Duration::from_secs(30));
    assert_eq!(
        (q["job"]["status"].as_str(), s["job"]["status"].as_str()),
        (Some("succeeded"), Some("cancelled"))
    );
    let quick_done = q["job"]["updated_at"].as_i64().expect("time");
    let stubborn_done = s["job"]["updated_at"].as_i64().expect("time");
    assert!(quick_done < stubborn_done, "the quick job ran while the stubborn one was being stopped");
    // What the node started is gone too, though its shell died first (at the SIGTERM).
    let left = Command::new("pgrep").args(["-f", "sleep 298"]).output().expect("pgrep");
    let running: Vec<i64> = String::from_utf8_lossy(&left.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| alive(p))
        .collect();
    assert!(running.is_empty(), "an orphan of the cancelled node runs: {running:?}");
}
