//! DDP through the `volt` binary: the launcher (`--trainer.devices 2` starts rank 1
//! itself), torchrun-style ranks, a rank killed mid-run, and resuming from `last`.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use volt_train::Checkpoint;

const EPOCHS: &str = "40";

fn fit_args(root: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "fit",
        "--model",
        "digits-mlp",
        "--seed",
        "0",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        EPOCHS,
        "--trainer.num_threads",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
    ]
    .map(String::from)
    .to_vec();
    args.push(root.display().to_string());
    args
}

fn volt(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_volt"));
    c.args(args);
    c
}

fn last_of(root: &Path) -> PathBuf {
    root.join("lightning_logs/version_0/checkpoints/last.safetensors")
}

fn wait_for(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.is_file() {
        assert!(Instant::now() < deadline, "{} did not appear within {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` to exit, at most `limit`, draining its pipes meanwhile; returns its
/// output and how long it took.
fn finish(child: Child, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => (out.expect("output"), start.elapsed()),
        Err(_) => {
            sigkill(pid);
            panic!("process still running after {limit:?}");
        }
    }
}

fn child_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn sigkill(pid: u32) {
    let status = Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
    assert!(status.success());
}

#[test]
fn a_killed_rank_is_named_by_the_survivor_and_last_resumes_to_the_same_parameters() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (reference, interrupted) = (tmp.path().join("reference"), tmp.path().join("interrupted"));

    // The uninterrupted 2-rank run; only rank zero prints the summary.
    let out = volt(&fit_args(&reference)).output().expect("run volt");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("fit finished").count(), 1, "{stdout}");
    assert!(stdout.contains("ddp: 2 ranks"), "{stdout}");

    // The same run, with rank 1 killed once a checkpoint exists.
    let child =
        volt(&fit_args(&interrupted)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    wait_for(&last_of(&interrupted), Duration::from_secs(120));
    let ranks = child_pids(child.id());
    assert_eq!(ranks.len(), 1, "the launcher starts exactly one other rank: {ranks:?}");
    sigkill(ranks[0]);
    let (out, took) = finish(child, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 0 must fail when rank 1 is lost");
    assert!(stderr.contains("lost rank 1"), "{stderr}");
    assert!(took < Duration::from_secs(60), "rank 0 took {took:?} to notice");
    let killed_at = Checkpoint::read_state(&last_of(&interrupted)).expect("state").progress;
    assert!(killed_at.epoch < 40, "the kill must land before the end: {killed_at:?}");

    // Resubmitted with --ckpt_path last: the same final parameters, bit for bit.
    let mut args = fit_args(&interrupted);
    args.extend(["--ckpt_path".into(), "last".into()]);
    let out = volt(&args).output().expect("resume");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) =
        (support::model_tensors(&last_of(&reference)), support::model_tensors(&last_of(&interrupted)));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "resumed run (from epoch {}) differs from the uninterrupted one", killed_at.epoch);
}

#[test]
fn torchrun_style_ranks_join_and_losing_rank_zero_fails_rank_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let spawn = |rank: usize| {
        volt(&fit_args(tmp.path()))
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rank")
    };
    let (rank0, rank1) = (spawn(0), spawn(1));
    wait_for(&last_of(tmp.path()), Duration::from_secs(120));
    assert!(child_pids(rank0.id()).is_empty(), "with RANK set, volt joins and launches nothing");
    sigkill(rank0.id());
    let (out, took) = finish(rank1, Duration::from_secs(90));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rank 1 must fail when rank 0 is lost");
    assert!(stderr.contains("lost rank 0"), "{stderr}");
    assert!(took < Duration::from_secs(60), "rank 1 took {took:?} to notice");
    let _ = finish(rank0, Duration::from_secs(5));
}

#[test]
fn a_world_size_that_disagrees_with_devices_is_refused_by_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = volt(&fit_args(tmp.path()))
        .env("RANK", "0")
        .env("WORLD_SIZE", "3")
        .env("MASTER_PORT", "1")
        .output()
        .expect("run volt");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("WORLD_SIZE=3") && stderr.contains("trainer.devices=2"), "{stderr}");
    assert!(!tmp.path().join("lightning_logs").exists(), "nothing is written");
}

#[test]
fn under_torchrun_each_process_joins_as_the_rank_it_is_given() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Read at run time: a test binary reused from another checkout must not point there.
    let python =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.python");
    let mut args = fit_args(tmp.path());
    args.iter_mut().filter(|a| a.as_str() == EPOCHS).for_each(|a| *a = "2".into());
    let out = Command::new(python)
        .args(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"])
        .arg(env!("CARGO_BIN_EXE_volt"))
        .args(&args)
        .output()
        .expect("run torchrun (scripts/setup installs torch)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("fit finished: max_epochs=2 reached").count(), 1, "{stdout}");
    assert!(stdout.contains("ddp: 2 ranks"), "{stdout}");
    let state = Checkpoint::read_state(&last_of(tmp.path())).expect("last checkpoint");
    // 1437 training samples: 719 per rank (one padded), 23 batches of 32 per epoch.
    assert_eq!(state.progress.global_step, 46);
    assert!(!tmp.path().join("lightning_logs/version_1").exists(), "one run folder for both ranks");
}

/// Two ranks started with a launcher's variables only (no RANK/WORLD_SIZE).
fn run_two_ranks_with(vars: impl Fn(usize) -> Vec<(String, String)>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = fit_args(tmp.path());
    args.iter_mut().filter(|a| a.as_str() == EPOCHS).for_each(|a| *a = "1".into());
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            volt(&args)
                .envs(vars(rank))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn rank")
        })
        .collect();
    let outputs: Vec<Output> = ranks.into_iter().map(|c| finish(c, Duration::from_secs(120)).0).collect();
    for (rank, out) in outputs.iter().enumerate() {
        assert!(out.status.success(), "rank {rank}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Rank 0 alone reports; both took part (23 steps per epoch means 2 ranks of 719).
    assert!(String::from_utf8_lossy(&outputs[0].stdout).contains("ddp: 2 ranks"));
    assert!(!String::from_utf8_lossy(&outputs[1].stdout).contains("fit finished"));
    let state = Checkpoint::read_state(&last_of(tmp.path())).expect("last checkpoint");
    assert_eq!(state.progress.global_step, 23);
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn slurm_and_open_mpi_variables_place_the_ranks() {
    let port =
        || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let slurm_port = port().to_string();
    run_two_ranks_with(|rank| {
        vars(&[
            ("SLURM_PROCID", rank.to_string()),
            ("SLURM_LOCALID", rank.to_string()),
            ("SLURM_NODEID", "0".into()),
            ("SLURM_NTASKS", "2".into()),
            ("SLURM_JOB_NAME", "digits".into()),
            ("SLURM_JOB_NODELIST", "localhost".into()),
            ("MASTER_PORT", slurm_port.clone()),
        ])
    });
    let mpi_port = port().to_string();
    run_two_ranks_with(|rank| {
        vars(&[
            ("OMPI_COMM_WORLD_RANK", rank.to_string()),
            ("OMPI_COMM_WORLD_LOCAL_RANK", rank.to_string()),
            ("OMPI_COMM_WORLD_SIZE", "2".into()),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2".into()),
            ("MASTER_PORT", mpi_port.clone()),
        ])
    });
}

#[test]
fn step_checkpoints_before_any_validation_do_not_stop_a_ddp_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let mut args = fit_args(&root);
    args.extend(
        ["--trainer.max_steps", "30", "--callbacks.model_checkpoint.every_n_train_steps", "20"]
            .map(String::from),
    );
    let out = volt(&args).output().expect("run volt");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("lost rank"), "{err}");
    assert!(last_of(&root).exists());
}
