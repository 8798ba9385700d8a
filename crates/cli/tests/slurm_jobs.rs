//! `volt job` on the slurm backend, against a real Slurm cluster (`scripts/slurm-rig`:
//! Debian's munge, slurmctld and one slurmd per node, each node in a network and UTS
//! namespace of its own, so a 2-node job's tasks run on two Slurm nodes and a lost node is
//! a real one): a 2-node digits job; `scontrol requeue`, a task killed with -9 and rank
//! 0's node lost mid-run, each finished on attempt 2 bitwise as an untouched run; a
//! control plane restarted mid-job; retries, a bad partition and cancel. Needs root and
//! slurm-wlm + munge (`.ci/run` installs them). One rig at a time: they would share
//! nothing, but Slurm's daemons are not light on two cores.
mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use support::studio::{
    assert_one_trained_run, assert_readopted, assert_recovers_bitwise, detail, events, launch, ls_row,
    node_handle, text, volt, wait_final, wait_until, Studio,
};

static ONE_RIG: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Slurm cluster of a few nodes, torn down when dropped.
struct Rig {
    dir: tempfile::TempDir,
    _one: MutexGuard<'static, ()>,
}

impl Rig {
    fn up(nodes: usize) -> Rig {
        let one = ONE_RIG.lock().unwrap_or_else(|e| e.into_inner());
        let port = std::net::TcpListener::bind("0.0.0.0:0").expect("port").local_addr().expect("addr").port();
        let dir = tempfile::Builder::new().prefix("volt-slurm").tempdir_in("/tmp").expect("rig dir");
        let out = Command::new(repo().join("scripts/slurm-rig"))
            .args(["up", &dir.path().display().to_string(), &nodes.to_string(), &port.to_string()])
            .output()
            .expect("scripts/slurm-rig");
        let rig = Rig { dir, _one: one };
        assert!(out.status.success(), "the rig: {}", text(&out));
        rig
    }
    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }
    fn studio(&self, home: &Path) -> Studio {
        Studio::up_with(home, &[("SLURM_CONF", &self.conf())])
    }
    /// A Slurm client command against this cluster; what it printed.
    fn slurm(&self, program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).env("SLURM_CONF", self.conf()).output().expect(program);
        assert!(out.status.success(), "{program} {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Every job Slurm still runs or will run, as "ID STATE" lines. (Not those completing:
    /// a job whose node was lost completes only once Slurm has marked the node down.)
    fn queue(&self) -> String {
        let all = self.slurm("squeue", &["-h", "-o", "%i %T"]);
        all.lines().filter(|l| !l.ends_with(" COMPLETING")).map(|l| format!("{l}\n")).collect()
    }
    fn lose(&self, node: usize) {
        let out = Command::new(repo().join("scripts/slurm-rig"))
            .args(["lose", &self.dir.path().display().to_string(), &node.to_string()])
            .output()
            .expect("lose");
        assert!(out.status.success(), "{}", text(&out));
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/slurm-rig"))
            .args(["down", &self.dir.path().display().to_string()])
            .output();
    }
}

const FIT: &str = "volt fit --model digits-mlp --seed 0 --trainer.strategy ddp --trainer.num_nodes 2 \
    --trainer.max_epochs 40 --trainer.num_threads 1 --trainer.enable_progress_bar false \
    --trainer.enable_model_summary false --callbacks.model_checkpoint.every_n_train_steps 50";

fn digits_spec(root: &str, restarts: u32) -> String {
    format!(
        "name = \"digits-slurm\"\nnum_nodes = 2\nrun = \"{FIT} --trainer.default_root_dir {root}\"\n\
         [retry]\nmax_restarts = {restarts}\n[backend]\nkind = \"slurm\"\n"
    )
}

/// The Slurm node each task of an attempt ran on, by rank (what the tasks wrote).
fn task_hosts(studio: &Studio, id: i64, attempt: i64) -> Vec<String> {
    let dir = studio.home.join(format!("jobs/{id}/attempt-{attempt}"));
    (0..2)
        .map(|r| {
            std::fs::read_to_string(dir.join(format!("node-{r}.host"))).unwrap_or_default().trim().to_owned()
        })
        .collect()
}

/// The Slurm job id of a node of an attempt.
fn slurm_job(d: &Value, attempt: i64, rank: i64) -> u64 {
    node_handle(d, attempt, rank)["job"].as_u64().expect("job")
}

/// Pids of volt processes of job `id`'s node `rank` (from their environment).
fn trainer_pids(id: i64, rank: usize) -> Vec<i32> {
    let want = [format!("VOLT_JOB_ID={id}"), format!("RANK={rank}")];
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let env: Vec<&[u8]> = env.split(|b| *b == 0).collect();
            cmd.split(|b| *b == 0).nth(1) == Some(b"fit".as_slice())
                && want.iter().all(|w| env.contains(&w.as_bytes()))
        })
        .collect()
}

#[test]
fn a_two_node_job_runs_one_task_on_each_of_two_slurm_nodes() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = rig.studio(&tmp.path().join("home"));
    let id = launch(&studio.home, tmp.path(), &digits_spec("runs", 0));
    let d = wait_final(&studio, id, Duration::from_secs(120));
    assert_eq!(d["job"]["status"], "succeeded", "{}", events(&d));
    assert_eq!(d["job"]["attempt"], 1);
    assert_eq!(
        task_hosts(&studio, id, 1),
        ["n1", "n2"],
        "node 0 on the first Slurm node, node 1 on the second"
    );
    assert_eq!(slurm_job(&d, 1, 0), slurm_job(&d, 1, 1), "one Slurm job per attempt");
    assert_one_trained_run(&studio, id, &tmp.path().join("runs/lightning_logs"));
    let row = ls_row(&studio.home, id);
    assert!(row.iter().any(|w| w == "slurm"), "{row:?}");
    assert_eq!(rig.queue().trim(), "", "nothing left in Slurm's queue");
}

/// The slurm backend's side of `assert_recovers_bitwise`, which leaves nothing in
/// Slurm's queue.
fn recovers_bitwise(
    rig: &Rig,
    tmp: &Path,
    break_it: impl FnOnce(&Value),
    named: &str,
) -> (Studio, i64, Value) {
    let studio = rig.studio(&tmp.join("home"));
    let (id, d) = assert_recovers_bitwise(&studio, tmp, digits_spec, break_it, named);
    assert_eq!(rig.queue().trim(), "", "nothing left in Slurm's queue");
    (studio, id, d)
}

#[test]
fn scontrol_requeue_mid_run_resumes_as_attempt_two_of_the_same_slurm_job() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let (studio, id, d) = recovers_bitwise(
        &rig,
        tmp.path(),
        |d| {
            rig.slurm("scontrol", &["requeue", &slurm_job(d, 1, 0).to_string()]);
        },
        "was lost: Slurm requeued job",
    );
    // Slurm's own requeue, adopted: the same Slurm job runs attempt 2 (no second sbatch).
    assert_eq!(slurm_job(&d, 1, 0), slurm_job(&d, 2, 0));
    // Slurm's SIGTERM reached volt fit, which stopped (on its own signal, or agreeing with
    // the rank that got it first) and wrote `last` before the requeue.
    let first = text(&volt(&studio.home, &["job", "logs", &id.to_string(), "--attempt", "1"]));
    let stopped = ["fit finished: interrupted by a signal", "fit finished: another rank asked to stop"];
    assert!(stopped.iter().any(|s| first.contains(s)), "{first}");
    assert!(first.contains("last checkpoint:"), "{first}");
}

#[test]
fn a_task_killed_mid_epoch_is_retried_and_the_job_ends_bitwise_as_if_untouched() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let (_studio, _id, d) = recovers_bitwise(
        &rig,
        tmp.path(),
        |d| {
            let id = d["job"]["id"].as_i64().expect("id");
            let pids = trainer_pids(id, 1);
            assert!(!pids.is_empty(), "node 1 runs volt fit");
            for pid in pids {
                // SAFETY: kill has no memory effects.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        },
        "exited with code 137",
    );
    assert_ne!(slurm_job(&d, 1, 0), slurm_job(&d, 2, 0), "attempt 2 is a new Slurm job");
}

#[test]
fn losing_rank_zeros_slurm_node_finishes_the_job_on_the_others_bitwise() {
    let rig = Rig::up(3);
    let tmp = tempfile::tempdir().expect("tmp");
    let (studio, id, _d) =
        recovers_bitwise(&rig, tmp.path(), |_| rig.lose(1), "its Slurm node n1 stopped answering");
    assert_eq!(task_hosts(&studio, id, 1), ["n1", "n2"]);
    assert_eq!(task_hosts(&studio, id, 2), ["n2", "n3"], "attempt 2 runs on the nodes that answer");
}

#[test]
fn a_restarted_control_plane_re_adopts_its_slurm_job_and_cancel_stops_it() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let home = tmp.path().join("home");
    let backend = "[backend]\nkind = \"slurm\"\n";
    let (studio, _id) = assert_readopted(&home, tmp.path(), backend, || rig.studio(&home));
    // Slurm ran one job for it.
    let jobs = rig.slurm("scontrol", &["show", "job", "-o"]);
    assert_eq!(jobs.lines().filter(|l| l.contains("JobName=volt-")).count(), 1, "{jobs}");

    // Cancel: every task stops within 10 s and Slurm's job is cancelled.
    let starts = tmp.path().join("starts.txt");
    let long = format!("num_nodes = 2\nrun = \"echo started $RANK >> starts.txt; sleep 297\"\n{backend}");
    let id = launch(&home, tmp.path(), &long);
    wait_until("both nodes start", Duration::from_secs(30), || {
        std::fs::read_to_string(&starts).is_ok_and(|s| s.lines().count() == 4)
    });
    let started = Instant::now();
    let out = volt(&home, &["job", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_final(&studio, id, Duration::from_secs(10));
    assert_eq!(d["job"]["status"], "cancelled", "{}", events(&d));
    wait_until("Slurm's queue is empty", Duration::from_secs(10).saturating_sub(started.elapsed()), || {
        rig.queue().trim().is_empty()
    });
    let sleeping = Command::new("pgrep").args(["-f", "sleep 297"]).output().expect("pgrep");
    assert!(String::from_utf8_lossy(&sleeping.stdout).trim().is_empty(), "a task still sleeps");
}

#[test]
fn a_failing_command_is_retried_on_slurm_and_a_bad_partition_fails_naming_it() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = rig.studio(&tmp.path().join("home"));
    let spec = "num_nodes = 2\nrun = \"echo try; exit $((RANK + 3))\"\n[retry]\nmax_restarts = 1\n\
                [backend]\nkind = \"slurm\"\n";
    let id = launch(&studio.home, tmp.path(), spec);
    let d = wait_final(&studio, id, Duration::from_secs(60));
    let history = events(&d);
    assert_eq!(
        (d["job"]["status"].as_str(), d["job"]["attempt"].as_i64()),
        (Some("failed"), Some(2)),
        "{history}"
    );
    let reason = d["job"]["reason"].as_str().expect("reason");
    assert!(reason.contains("node 0 on slurm job") && reason.contains("exited with code 3"), "{reason}");
    assert!(reason.contains("attempt 2 of 2"), "{reason}");
    let log = text(&volt(&studio.home, &["job", "logs", &id.to_string()]));
    assert_eq!(log.matches("try").count(), 2, "both attempts' logs of node 0: {log}");
    assert_eq!(rig.queue().trim(), "");

    let id = launch(
        &studio.home,
        tmp.path(),
        &spec.replace("[backend]\n", "[backend]\npartition = \"nowhere\"\n"),
    );
    let d = wait_final(&studio, id, Duration::from_secs(30));
    let reason = d["job"]["reason"].as_str().unwrap_or_default();
    assert_eq!(d["job"]["status"], "failed", "{}", events(&d));
    assert!(reason.contains("sbatch") && reason.contains("partition"), "{reason}");
    assert!(d["nodes"].as_array().is_some_and(|n| n.is_empty()), "nothing started: {d}");
}

#[test]
fn slurms_sigterm_without_a_requeue_is_no_success_the_job_resumes_on_attempt_two() {
    // What a time limit, a preemption without requeue or an admin's `scancel --signal=TERM`
    // does: volt fit stops early and writes `last`, which must not pass for the end of
    // training.
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = rig.studio(&tmp.path().join("home"));
    let id = launch(&studio.home, tmp.path(), &digits_spec("runs", 1));
    let last = tmp.path().join("runs/lightning_logs/version_0/checkpoints/last.safetensors");
    wait_until("a first checkpoint", Duration::from_secs(60), || last.is_file());
    let job = slurm_job(&detail(&studio, id), 1, 0).to_string();
    rig.slurm("scancel", &["--signal=TERM", &job]);
    let d = wait_final(&studio, id, Duration::from_secs(120));
    let history = events(&d);
    assert_eq!(
        (d["job"]["status"].as_str(), d["job"]["attempt"].as_i64()),
        (Some("succeeded"), Some(2)),
        "{history}"
    );
    assert!(history.contains("exited with code 143"), "{history}");
    let log = text(&volt(&studio.home, &["job", "logs", &id.to_string(), "--attempt", "2"]));
    assert!(log.contains("resuming from") && log.contains("max_epochs=40 reached"), "{log}");
}

#[test]
fn a_job_waiting_in_slurms_queue_is_cancelled_at_once_and_a_wrong_slurm_conf_is_named() {
    let rig = Rig::up(2);
    let tmp = tempfile::tempdir().expect("tmp");
    let studio = rig.studio(&tmp.path().join("home"));
    let sleeper = "num_nodes = 2\nrun = \"sleep 296\"\n[backend]\nkind = \"slurm\"\n";
    let busy = launch(&studio.home, tmp.path(), sleeper);
    wait_until("the first job runs", Duration::from_secs(30), || rig.queue().contains("RUNNING"));
    let waiting = launch(&studio.home, tmp.path(), sleeper);
    wait_until("the second job waits in Slurm's queue", Duration::from_secs(30), || {
        rig.queue().contains("PENDING")
    });
    assert_eq!(detail(&studio, waiting)["job"]["status"], "running", "submitted, so running to volt");
    let started = Instant::now();
    let out = volt(&studio.home, &["job", "cancel", &waiting.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let d = wait_final(&studio, waiting, Duration::from_secs(10));
    assert_eq!(d["job"]["status"], "cancelled", "{}", events(&d));
    wait_until(
        "Slurm forgets the waiting job",
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        || !rig.queue().contains("PENDING"),
    );
    let nodes = d["nodes"].as_array().expect("nodes");
    assert!(nodes.iter().all(|n| n["status"] == "stopped"), "stopped, not lost: {d}");
    let out = volt(&studio.home, &["job", "cancel", &busy.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(wait_final(&studio, busy, Duration::from_secs(10))["job"]["status"], "cancelled");

    // A control plane whose SLURM_CONF names no file fails the job, saying so.
    let home = tmp.path().join("home2");
    let lost = Studio::up_with(&home, &[("SLURM_CONF", &tmp.path().join("nowhere/slurm.conf"))]);
    let id = launch(&home, tmp.path(), "run = \"true\"\n[backend]\nkind = \"slurm\"\n");
    let d = wait_final(&lost, id, Duration::from_secs(60));
    let reason = d["job"]["reason"].as_str().unwrap_or_default();
    assert_eq!(d["job"]["status"], "failed", "{}", events(&d));
    assert!(reason.contains("nowhere/slurm.conf"), "{reason}");
}
