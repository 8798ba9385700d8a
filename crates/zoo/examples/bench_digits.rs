//! digits-mlp on volt's Trainer (`trainer`), on the Trainer with 2 ddp ranks of one
//! thread each (`ddp2`), or in a hand-written tch loop (`loop`): the volt side of
//! bench/run's train/digits-mlp and train/digits-mlp-ddp2 cases;
//! bench/peers/lightning_digits.py is the other. Prints one JSON line (rank 0 only):
//! steps, seconds from the end of the first step to the end of training, seconds from
//! BENCH_T0 (the harness's launch time) to the first step, and the share of the training
//! loop that rank 0 spent in collectives.
//!
//! bench_digits trainer|ddp2|loop EPOCHS OUT_DIR
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tch::nn::OptimizerConfig as _;
use volt_train::{
    Callback, CallbackContext, DataModule, LoggerKind, ModelCheckpoint, StrategyKind, Trainer, TrainerConfig,
    VoltModule,
};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig};

fn since_t0() -> f64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let t0 = std::env::var("BENCH_T0").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(now);
    now - t0
}

#[derive(Clone, Default)]
struct First(std::sync::Arc<std::sync::Mutex<Option<(f64, Instant)>>>);

impl Callback for First {
    fn name(&self) -> String {
        "First".into()
    }
    fn on_train_batch_end(&mut self, _: &mut CallbackContext, _: f64) -> volt_train::Result<()> {
        let mut first = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some((since_t0(), Instant::now()));
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (mode, epochs, out) = match &args[..] {
        [_, m, e, o] => (m.as_str(), e.parse::<usize>()?, o.clone()),
        _ => return Err("usage: bench_digits trainer|loop EPOCHS OUT_DIR".into()),
    };
    volt_train::seed_everything(0);
    let mut model = DigitsMlp::new(DigitsMlpConfig::default(), tch::Device::Cpu);
    let data = DigitsData::new(DigitsDataConfig::default())?;
    let (steps, seconds, first_s, comm_s) = match mode {
        "trainer" | "ddp2" => {
            let ddp = mode == "ddp2";
            let first = First::default();
            let mut trainer = Trainer::new(TrainerConfig {
                max_epochs: Some(epochs),
                default_root_dir: out.into(),
                loggers: vec![LoggerKind::Csv],
                enable_progress_bar: false,
                enable_model_summary: false,
                seed: Some(0),
                strategy: if ddp { StrategyKind::Ddp } else { StrategyKind::SingleDevice },
                devices: if ddp { 2 } else { 1 },
                num_threads: Some(if ddp { 1 } else { 2 }),
                ..TrainerConfig::default()
            })?
            .with_callback(ModelCheckpoint::default())
            .with_callback(first.clone());
            let outcome = trainer.fit(&mut model, &data, None)?;
            if !trainer.fabric().is_global_zero() {
                return Ok(());
            }
            let (first_s, t_first) = first.0.lock().map_err(|_| "poisoned")?.ok_or("no step")?;
            // Share of the training loop that rank 0 spent in collectives.
            let comm = trainer.fabric().comm_stats().time.as_secs_f64() / outcome.train_time.as_secs_f64();
            (outcome.steps_this_run, t_first.elapsed().as_secs_f64(), first_s, comm)
        }
        "loop" => {
            tch::set_num_threads(2);
            let mut opt = tch::nn::AdamW::default().build(model.var_store(), 1e-3)?;
            let loader = data.train_dataloader().ok_or("no loader")?;
            let mut steps = 0u64;
            let mut first = None;
            for epoch in 0..epochs {
                for batch in loader.epoch(epoch, 0) {
                    let (x, y) = batch?;
                    let loss = model.forward(&x).cross_entropy_for_logits(&y);
                    opt.backward_step(&loss);
                    let _ = loss.double_value(&[]);
                    steps += 1;
                    first.get_or_insert_with(|| (since_t0(), Instant::now()));
                }
            }
            let (first_s, t_first) = first.ok_or("no step")?;
            (steps, t_first.elapsed().as_secs_f64(), first_s, 0.0)
        }
        other => return Err(format!("unknown mode {other}").into()),
    };
    println!(
        "{{\"steps\": {steps}, \"train_seconds\": {seconds}, \"first_step_s\": {first_s}, \"comm_share\": {comm_s}}}"
    );
    Ok(())
}
