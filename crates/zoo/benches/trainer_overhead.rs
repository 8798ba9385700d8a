//! Trainer overhead on digits-mlp: the Trainer (everything off; then CSV logging and a
//! checkpoint per epoch) against hand-written tch loops, interleaved A B C D A B C D ...,
//! medians reported. Also the process's time from start to the first optimizer step.
//!
//! cargo bench -p volt-zoo --bench trainer_overhead [-- --rounds N --epochs N --smoke]
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::nn::OptimizerConfig as _;
use tch::{nn, Device};
use volt_train::{
    Callback, CallbackContext, DataModule, LoggerKind, ModelCheckpoint, Trainer, TrainerConfig, VoltModule,
};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

const THREADS: i32 = 2;

fn data() -> DigitsData {
    DigitsData::new(DigitsDataConfig { prefetch: 2, ..DigitsDataConfig::default() }).expect("config")
}

/// Steps/s of a plain tch loop: same model and data order; the optimizer is tch's own
/// AdamW (`fused = false`) or volt's, which runs libtorch's fused AdamW kernel.
fn hand_loop(epochs: usize, fused: bool) -> f64 {
    volt_train::seed_everything(0);
    let m = DigitsMlp::new(DigitsMlpConfig::default(), Device::Cpu);
    let mut tch_opt = nn::AdamW::default().build(m.var_store(), 1e-3).expect("optimizer");
    let mut volt_opt = volt_train::Optimizer::new(volt_train::OptimizerSpec::adamw(1e-3), m.var_store());
    let loader = data().train_dataloader().expect("loader");
    let start = Instant::now();
    let mut steps = 0;
    for epoch in 0..epochs {
        for batch in loader.epoch(epoch, 0) {
            let (x, y) = batch.expect("batch");
            let loss = m.forward(&x).cross_entropy_for_logits(&y);
            if fused {
                loss.backward();
                volt_opt.step().expect("step");
                volt_opt.zero_grad();
            } else {
                tch_opt.backward_step(&loss);
            }
            let _ = loss.double_value(&[]);
            steps += 1;
        }
    }
    steps as f64 / start.elapsed().as_secs_f64()
}

/// Steps/s of the Trainer; `logging` turns on CSV logging and a checkpoint per epoch.
fn trainer(epochs: usize, logging: bool, root: &std::path::Path) -> f64 {
    volt_train::seed_everything(0);
    let mut m = DigitsMlp::new(DigitsMlpConfig::default(), Device::Cpu);
    let mut config = TrainerConfig {
        max_epochs: Some(epochs),
        default_root_dir: root.to_owned(),
        num_sanity_val_steps: 0,
        limit_val_batches: volt_train::BatchLimit::Count(0),
        seed: Some(0),
        ..TrainerConfig::default()
    }
    .quiet();
    if logging {
        config.loggers = vec![LoggerKind::Csv];
        config.enable_checkpointing = true;
    }
    let mut t = Trainer::new(config).expect("trainer");
    if logging {
        t = t.with_callback(ModelCheckpoint::default());
    }
    let out = t.fit(&mut m, &data(), None).expect("fit");
    out.steps_this_run as f64 / out.train_time.as_secs_f64()
}

struct FirstStep;
impl Callback for FirstStep {
    fn name(&self) -> String {
        "FirstStep".into()
    }
    fn on_train_batch_end(&mut self, ctx: &mut CallbackContext, _loss: f64) -> volt_train::Result<()> {
        if ctx.progress.global_step == 1 {
            println!("FIRST_STEP");
        }
        Ok(())
    }
}

/// Child mode: one short fit that announces its first step on stdout.
fn first_step_child() {
    tch::set_num_threads(THREADS);
    volt_train::seed_everything(0);
    let mut m = DigitsMlp::new(DigitsMlpConfig::default(), Device::Cpu);
    let mut t = Trainer::new(TrainerConfig { max_steps: Some(2), ..TrainerConfig::default() }.quiet())
        .expect("trainer")
        .with_callback(FirstStep);
    t.fit(&mut m, &data(), None).expect("fit");
}

/// Wall time from spawning this binary to its first optimizer step.
fn time_to_first_step() -> Duration {
    let start = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("--first-step-child")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut elapsed = None;
    for line in std::io::BufReader::new(stdout).lines() {
        if line.expect("line").trim() == "FIRST_STEP" {
            elapsed = Some(start.elapsed());
        }
    }
    child.wait().expect("wait");
    elapsed.expect("the child reported its first step")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if std::env::args().any(|a| a == "--first-step-child") {
        return first_step_child();
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    let rounds: usize = arg("--rounds").and_then(|v| v.parse().ok()).unwrap_or(if smoke { 1 } else { 5 });
    let epochs: usize = arg("--epochs").and_then(|v| v.parse().ok()).unwrap_or(if smoke { 1 } else { 20 });
    tch::set_num_threads(THREADS);
    let root = tempfile::tempdir().expect("tempdir");
    let (mut tch_hand, mut hand, mut bare, mut logged) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Warm-up, excluded.
    hand_loop(1, true);
    trainer(1, false, root.path());
    for _ in 0..rounds {
        tch_hand.push(hand_loop(epochs, false));
        hand.push(hand_loop(epochs, true));
        bare.push(trainer(epochs, false, root.path()));
        logged.push(trainer(epochs, true, root.path()));
    }
    let mut firsts: Vec<f64> = (0..rounds.max(3)).map(|_| time_to_first_step().as_secs_f64() * 1e3).collect();
    let (t, h, b, l) = (median(&mut tch_hand), median(&mut hand), median(&mut bare), median(&mut logged));
    let first = median(&mut firsts);
    println!(
        "digits-mlp, {epochs} epochs x 45 steps, {THREADS} threads, {rounds} interleaved rounds (median)"
    );
    println!("  hand loop, tch's AdamW       {t:8.1} steps/s");
    println!("  hand loop, volt's fused AdamW{h:8.1} steps/s  (the baseline below)");
    println!("  Trainer, defaults off        {b:8.1} steps/s  ({:.3}x the loop)", b / h);
    println!("  Trainer, CSV + ckpt/epoch    {l:8.1} steps/s  ({:.3}x the loop)", l / h);
    println!("  process start to first step  {first:8.1} ms");
    let json = serde_json::json!({
        "case": "train/digits-mlp-overhead",
        "epochs": epochs, "rounds": rounds, "threads": THREADS,
        "hand_loop_tch_adamw_steps_per_s": t, "hand_loop_steps_per_s": h, "trainer_bare_steps_per_s": b, "trainer_logged_steps_per_s": l,
        "bare_ratio": b / h, "logged_ratio": l / h, "start_to_first_step_ms": first,
    });
    if let Some(out) = arg("--json") {
        std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")).expect("write json");
    }
}
