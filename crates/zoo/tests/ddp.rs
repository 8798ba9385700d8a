//! DDP acceptance on digits-mlp through the Trainer API: real ranks in separate
//! processes (this test binary started again as `ddp_worker`), meeting over c10d.
//!
//! The worker is an ignored test that does nothing unless `VOLT_DDP_TEST_OUT` is set;
//! the tests below start it with torchrun-style variables, one process per rank.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tch::{nn, Tensor};
use volt_train::metrics::LogOptions;
use volt_train::{
    Callback, CallbackContext, DataModule, Fabric, FabricConfig, OptimizerSpec, ReduceOp, StepContext,
    StrategyKind, Trainer, TrainerConfig, VoltModule,
};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

const STEPS: u64 = 30;

/// digits-mlp that records, at the start of every training step, a hash of the bits of
/// all its parameters, and logs its rank (synced and not) in validation.
struct Probe {
    inner: DigitsMlp,
    hashes: Vec<u64>,
}

fn params_of(vs: &nn::VarStore) -> BTreeMap<String, Vec<f32>> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor")))
        .collect()
}

fn bits_hash(params: &BTreeMap<String, Vec<f32>>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, values) in params {
        name.hash(&mut h);
        values.iter().for_each(|v| v.to_bits().hash(&mut h));
    }
    h.finish()
}

impl VoltModule for Probe {
    type Batch = (Tensor, Tensor);
    type Prediction = Tensor;
    fn var_store(&self) -> &nn::VarStore {
        self.inner.var_store()
    }
    fn training_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<Tensor> {
        self.hashes.push(bits_hash(&params_of(self.inner.var_store())));
        self.inner.training_step(batch, ctx)
    }
    fn validation_step(&mut self, batch: &Self::Batch, ctx: &mut StepContext) -> volt_train::Result<()> {
        let rank: f64 = std::env::var("RANK").ok().and_then(|r| r.parse().ok()).unwrap_or(0.0);
        ctx.log_with("rank_synced", rank, LogOptions { sync_dist: true, ..LogOptions::default() });
        ctx.log_with("rank_local", rank, LogOptions::default());
        self.inner.validation_step(batch, ctx)
    }
    fn configure_optimizers(&self) -> volt_train::OptimizerConfig {
        self.inner.configure_optimizers()
    }
}

/// What one rank reports back.
#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    hashes: Vec<u64>,
    params: BTreeMap<String, Vec<f32>>,
    metrics: BTreeMap<String, f64>,
    world_size: usize,
    global_step: u64,
    stop_reason: String,
}

/// Asks to stop on one rank only: after a given step, or at the first validation end.
struct StopOnOneRank {
    rank: usize,
    after_step: Option<u64>,
}

impl Callback for StopOnOneRank {
    fn name(&self) -> String {
        "StopOnOneRank".into()
    }
    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> volt_train::Result<()> {
        if rank_env() == self.rank && self.after_step == Some(ctx.progress.global_step) {
            ctx.request_stop(format!("rank {} asked after step {}", self.rank, ctx.progress.global_step));
        }
        Ok(())
    }
    fn on_validation_end(&mut self, ctx: &mut CallbackContext) -> volt_train::Result<()> {
        if rank_env() == self.rank && self.after_step.is_none() {
            ctx.request_stop(format!("rank {} decided at validation", self.rank));
        }
        Ok(())
    }
}

fn rank_env() -> usize {
    std::env::var("RANK").ok().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn train(batch_size: usize, strategy: StrategyKind, devices: usize, root: &Path) -> Report {
    volt_train::seed_everything(0);
    let mut config = TrainerConfig {
        default_root_dir: root.to_owned(),
        seed: Some(0),
        max_steps: Some(STEPS),
        // Within the first epoch (45 steps), where both runs see exactly the same samples.
        val_check_interval: volt_train::BatchLimit::Count(15),
        num_sanity_val_steps: 0,
        strategy,
        devices,
        num_threads: Some(1),
        ..TrainerConfig::default()
    }
    .quiet();
    config.enable_checkpointing = true;
    config.loggers = vec![volt_train::LoggerKind::Csv];
    let mut trainer = Trainer::new(config).expect("trainer");
    match std::env::var("VOLT_DDP_TEST_STOP").as_deref() {
        // A per-step request from rank 1: every rank stops after the same later step.
        Ok("step") => trainer = trainer.with_callback(StopOnOneRank { rank: 1, after_step: Some(5) }),
        // A validation-end decision (where EarlyStopping acts) comes from rank 0.
        Ok("validation") => trainer = trainer.with_callback(StopOnOneRank { rank: 0, after_step: None }),
        Ok("validation-other") => {
            trainer = trainer.with_callback(StopOnOneRank { rank: 1, after_step: None })
        }
        _ => {}
    }
    let mut module = Probe {
        inner: DigitsMlp::new(DigitsMlpConfig::default(), trainer.fabric().device()),
        hashes: Vec::new(),
    };
    let data = DigitsData::new(DigitsDataConfig { batch_size, ..DigitsDataConfig::default() }).expect("data");
    let out = trainer.fit(&mut module, &data, None).expect("fit");
    Report {
        params: params_of(module.var_store()),
        hashes: module.hashes,
        metrics: out.metrics.into_iter().collect(),
        world_size: trainer.fabric().world_size(),
        global_step: out.progress.global_step,
        stop_reason: out.stop_reason,
    }
}

/// Fabric's collectives and accumulation on one rank; returns what it saw.
fn fabric_probe(out: &Path) -> serde_json::Value {
    let mut fabric =
        Fabric::new(&FabricConfig { devices: 2, num_threads: Some(1), ..FabricConfig::default() })
            .expect("fabric");
    let rank = fabric.rank() as f64;
    let mine = Tensor::from_slice(&[rank + 1.0]);
    let value = |t: volt_train::Result<Tensor>| t.expect("collective").double_value(&[0]);
    let sum = value(fabric.all_reduce(&mine, ReduceOp::Sum));
    let mean = value(fabric.all_reduce(&mine, ReduceOp::Mean));
    let max = value(fabric.all_reduce(&mine, ReduceOp::Max));
    let gathered: Vec<Vec<f64>> = fabric
        .all_gather(&Tensor::from_slice(&[rank, rank * 10.0]))
        .expect("all_gather")
        .into_iter()
        .map(|t| Vec::<f64>::try_from(t).expect("f64"))
        .collect();
    let from_one = value(fabric.broadcast(&Tensor::from_slice(&[rank + 5.0]), 1));
    let text = fabric.broadcast_bytes(format!("from rank {rank}").as_bytes(), 0).expect("bytes");
    // Rank zero prepares a file; the others find it because they run after it.
    let marker = out.join("prepared-by-rank-zero");
    let found = fabric
        .rank_zero_first(|| {
            if fabric.is_global_zero() {
                std::fs::write(&marker, b"ok").expect("write marker");
            }
            marker.is_file()
        })
        .expect("rank_zero_first");

    // Accumulating 4 micro-batches: one all-reduce per update (one bucket holds all six
    // tensors of digits-mlp), none for the micro-batches in between.
    volt_train::seed_everything(0);
    let model = DigitsMlp::new(DigitsMlpConfig::default(), fabric.device());
    let mut opt = fabric.setup(model.var_store(), OptimizerSpec::adamw(1e-3)).expect("setup");
    let data =
        DigitsData::new(DigitsDataConfig { batch_size: 8, ..DigitsDataConfig::default() }).expect("data");
    let loader = fabric.setup_dataloader(data.train_dataloader().expect("train loader"));
    let before = fabric.comm_stats().calls;
    for (i, batch) in loader.epoch(0, 0).take(8).enumerate() {
        let (x, y) = batch.expect("batch");
        let loss = model.forward(&x).cross_entropy_for_logits(&y) / 4.0;
        if (i + 1) % 4 == 0 {
            fabric.backward(&loss).expect("backward");
            opt.step().expect("step");
            opt.zero_grad();
        } else {
            fabric.no_backward_sync(|f| f.backward(&loss)).expect("backward");
        }
    }
    let reduces = fabric.comm_stats().calls - before;
    let params = params_of(model.var_store());
    serde_json::json!({
        "sum": sum, "mean": mean, "max": max, "gathered": gathered, "from_one": from_one,
        "text": String::from_utf8_lossy(&text), "found": found, "reduces": reduces,
        "hash": bits_hash(&params),
    })
}

/// One rank of a job started by the tests below; a no-op in a plain test run.
#[test]
#[ignore = "started by the ddp tests as a rank process"]
fn ddp_worker() {
    let Ok(out) = std::env::var("VOLT_DDP_TEST_OUT") else { return };
    let out = Path::new(&out);
    let batch: usize = std::env::var("VOLT_DDP_TEST_BATCH").expect("batch").parse().expect("number");
    let report = if batch == 0 {
        fabric_probe(out)
    } else {
        serde_json::to_value(train(batch, StrategyKind::Ddp, 2, Path::new("runs"))).expect("json")
    };
    let rank = std::env::var("RANK").expect("RANK");
    std::fs::write(out.join(format!("rank{rank}.json")), serde_json::to_vec(&report).expect("json"))
        .expect("write report");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Starts `world` ranks of `ddp_worker`, each in its own working directory.
fn start_ranks(world: usize, out: &Path, batch: usize, cwds: &[PathBuf]) -> Vec<Child> {
    start_ranks_with(world, out, batch, cwds, "")
}

fn start_ranks_with(world: usize, out: &Path, batch: usize, cwds: &[PathBuf], stop: &str) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "ddp_worker", "--ignored", "--nocapture", "--test-threads", "1"])
                .current_dir(&cwds[rank])
                .env("VOLT_DDP_TEST_OUT", out)
                .env("VOLT_DDP_TEST_BATCH", batch.to_string())
                .env("VOLT_DDP_TEST_STOP", stop)
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .spawn()
                .expect("start rank")
        })
        .collect()
}

fn wait_all(children: Vec<Child>, limit: Duration) {
    let deadline = Instant::now() + limit;
    for mut c in children {
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(status.success(), "a rank failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("a rank did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn two_ranks_match_one_rank_with_double_batch_and_only_rank_zero_writes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwds: Vec<PathBuf> = (0..2).map(|r| tmp.path().join(format!("cwd{r}"))).collect();
    cwds.iter().for_each(|d| std::fs::create_dir_all(d).expect("mkdir"));
    wait_all(start_ranks(2, tmp.path(), 16, &cwds), Duration::from_secs(240));
    let read = |r: usize| -> Report {
        serde_json::from_slice(&std::fs::read(tmp.path().join(format!("rank{r}.json"))).expect("report"))
            .expect("parse report")
    };
    let (r0, r1) = (read(0), read(1));
    assert_eq!((r0.world_size, r1.world_size), (2, 2));

    // The ranks hold bitwise-equal parameters before every step and at the end.
    assert_eq!(r0.hashes.len(), STEPS as usize);
    assert_eq!(r0.hashes, r1.hashes, "parameters diverged between ranks");
    assert_eq!(bits_hash(&r0.params), bits_hash(&r1.params));

    // One rank with twice the batch sees the same samples per step: same parameters.
    let single = train(32, StrategyKind::SingleDevice, 1, &tmp.path().join("single"));
    let mut worst = 0f32;
    for (name, values) in &single.params {
        let theirs = &r0.params[name];
        assert_eq!(values.len(), theirs.len(), "{name}");
        worst = values.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    assert!(worst <= 1e-5, "2 ranks × 16 vs 1 rank × 32: max |Δparam| = {worst}");

    // sync_dist reduces to the global mean (ranks 0 and 1 see as many samples each);
    // without it, each rank keeps its own value.
    assert_eq!(r0.metrics["rank_synced"], 0.5);
    assert_eq!(r1.metrics["rank_synced"], 0.5);
    assert_eq!(r0.metrics["rank_local"], 0.0);
    assert_eq!(r1.metrics["rank_local"], 1.0);
    let acc_diff = (r0.metrics["val_acc"] - single.metrics["val_acc"]).abs();
    assert!(
        acc_diff <= 1.0 / 360.0 + 1e-9,
        "synced val_acc {} vs one rank {}",
        r0.metrics["val_acc"],
        single.metrics["val_acc"]
    );
    assert_eq!(r0.metrics["val_acc"], r1.metrics["val_acc"]);

    // Only rank zero wrote: its folder has the run, rank 1's has nothing.
    let written0 = files_under(&cwds[0]);
    assert!(written0.iter().any(|p| p.ends_with("checkpoints/last.safetensors")), "{written0:?}");
    assert!(written0.iter().any(|p| p.ends_with("metrics.csv")), "{written0:?}");
    assert_eq!(files_under(&cwds[1]), Vec::<PathBuf>::new(), "rank 1 wrote files");
}

#[test]
fn fabric_collectives_and_accumulation_sync_only_on_updates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cwds = vec![tmp.path().to_owned(), tmp.path().to_owned()];
    wait_all(start_ranks(2, tmp.path(), 0, &cwds), Duration::from_secs(240));
    let read = |r: usize| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(tmp.path().join(format!("rank{r}.json"))).expect("report"))
            .expect("parse report")
    };
    for (rank, r) in [(0, read(0)), (1, read(1))] {
        assert_eq!(r["sum"], 3.0, "rank {rank}: {r}");
        assert_eq!(r["mean"], 1.5, "rank {rank}: {r}");
        assert_eq!(r["max"], 2.0, "rank {rank}: {r}");
        assert_eq!(r["gathered"], serde_json::json!([[0.0, 0.0], [1.0, 10.0]]), "rank {rank}");
        assert_eq!(r["from_one"], 6.0, "rank {rank}");
        assert_eq!(r["text"], "from rank 0", "rank {rank}");
        assert_eq!(r["found"], true, "rank {rank}: rank_zero_first ran rank 0 first");
        assert_eq!(r["reduces"], 2, "rank {rank}: 8 micro-batches, 2 updates, 1 bucket each");
    }
    assert_eq!(read(0)["hash"], read(1)["hash"], "ranks hold the same parameters");
}

#[test]
fn stop_requests_are_agreed_so_every_rank_stops_after_the_same_step() {
    // (scenario, expected global step, expected reason on rank 0 and on rank 1)
    let cases = [
        ("step", 6, ["another rank asked to stop", "rank 1 asked after step 5"]),
        ("validation", 15, ["rank 0 decided at validation"; 2]),
        // Rank 0 decides at validation ends: rank 1's wish alone does not stop the job.
        ("validation-other", STEPS, ["max_steps=30 reached"; 2]),
    ];
    for (scenario, step, reasons) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cwds = vec![tmp.path().join("a"), tmp.path().join("b")];
        cwds.iter().for_each(|d| std::fs::create_dir_all(d).expect("mkdir"));
        wait_all(start_ranks_with(2, tmp.path(), 16, &cwds, scenario), Duration::from_secs(120));
        for (r, reason) in reasons.iter().enumerate() {
            let report: Report = serde_json::from_slice(
                &std::fs::read(tmp.path().join(format!("rank{r}.json"))).expect("report"),
            )
            .expect("parse");
            assert_eq!(
                (report.global_step, report.stop_reason.as_str()),
                (step, *reason),
                "{scenario}, rank {r}"
            );
        }
    }
}
