//! Acceptance tests of the Trainer on digits-mlp: accuracy, parity with a hand-written
//! tch loop, exact resume, gradient accumulation, gradients, logs and bad checkpoints.
use std::path::Path;
use tch::nn::OptimizerConfig as _;
use tch::{nn, Device, Kind, Tensor};
use volt_train::{
    Callback, CallbackContext, Checkpoint, CkptPath, LoggerKind, Sampler, Trainer, TrainerConfig, VoltModule,
};
use volt_zoo::digits::{self, collate};
use volt_zoo::{DigitsData, DigitsDataConfig, DigitsMlp, DigitsMlpConfig, SmolLm2, SmolLm2Config};

/// libtorch's random generator is process-global: tests that seed it and then build or
/// train a model must not interleave, or initial weights would differ from run to run.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn model(seed: u64) -> DigitsMlp {
    volt_train::seed_everything(seed);
    DigitsMlp::new(DigitsMlpConfig::default(), Device::Cpu)
}

fn data() -> DigitsData {
    DigitsData::new(DigitsDataConfig::default()).expect("valid config")
}

fn quiet(root: &Path) -> TrainerConfig {
    TrainerConfig {
        default_root_dir: root.to_owned(),
        seed: Some(0),
        num_sanity_val_steps: 0,
        ..TrainerConfig::default()
    }
    .quiet()
}

/// Records the loss of every optimizer step.
#[derive(Default)]
struct LossRecorder(std::sync::Arc<std::sync::Mutex<Vec<f64>>>);

impl Callback for LossRecorder {
    fn name(&self) -> String {
        "LossRecorder".into()
    }
    fn on_train_batch_end(&mut self, _ctx: &mut CallbackContext, loss: f64) -> volt_train::Result<()> {
        self.0.lock().expect("not poisoned").push(loss);
        Ok(())
    }
}

fn params(m: &DigitsMlp) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = m.var_store().variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn digits_mlp_reaches_97_percent_validation_accuracy_within_30_epochs() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = model(0);
    let mut trainer =
        Trainer::new(TrainerConfig { max_epochs: Some(30), ..quiet(dir.path()) }).expect("trainer");
    let out = trainer.fit(&mut m, &data(), None).expect("fit");
    let acc = out.metrics["val_acc"];
    assert_eq!(out.progress.epoch, 30);
    assert_eq!(out.progress.global_step, 30 * 45, "1437 samples / 32 = 45 batches an epoch");
    assert!(acc >= 0.97, "val_acc after 30 epochs = {acc}");
}

#[test]
fn trainer_matches_a_hand_written_tch_loop() {
    let _serial = serial();
    let steps = 120; // crosses an epoch boundary (45 batches per epoch)
    let dir = tempfile::tempdir().expect("tempdir");

    // The Trainer, everything that writes or prints turned off.
    let mut by_trainer = model(3);
    let recorder = LossRecorder::default();
    let losses = recorder.0.clone();
    let mut trainer = Trainer::new(TrainerConfig { max_steps: Some(steps), ..quiet(dir.path()) })
        .expect("trainer")
        .with_callback(recorder);
    trainer.fit(&mut by_trainer, &data(), None).expect("fit");
    let trainer_losses = losses.lock().expect("not poisoned").clone();

    // By hand: tch's own AdamW (libtorch's torch::optim), the same data order.
    let by_hand = model(3);
    let mut opt = nn::AdamW::default().build(by_hand.var_store(), 1e-3).expect("optimizer");
    let (train_idx, _) = digits::split();
    let all = digits::all();
    let sampler = Sampler { shuffle: true, seed: 0, ..Sampler::default() };
    let mut hand_losses = Vec::new();
    'outer: for epoch in 0.. {
        let order = sampler.indices(train_idx.len(), epoch);
        for chunk in order.chunks(32) {
            let items = chunk.iter().map(|&i| all[train_idx[i]].clone()).collect();
            let (x, y) = collate(items).expect("collate");
            let loss = by_hand.forward(&x).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
            hand_losses.push(loss.double_value(&[]));
            if hand_losses.len() as u64 == steps {
                break 'outer;
            }
        }
    }

    assert_eq!(trainer_losses.len(), hand_losses.len());
    for (i, (a, b)) in trainer_losses.iter().zip(&hand_losses).enumerate() {
        assert!((a - b).abs() <= 1e-6, "step {i}: trainer {a} vs hand {b}");
    }
    let diff = max_abs_diff(&params(&by_trainer), &params(&by_hand));
    assert!(diff <= 1e-6, "final weights differ by {diff}");
}

fn checkpoint_tensors(path: &Path) -> Vec<(String, Tensor)> {
    Checkpoint::load(path).expect("checkpoint").tensors
}

#[test]
fn resuming_mid_epoch_from_last_is_bitwise_exact() {
    let _serial = serial();
    let total = 100;
    let run = |root: &Path, max_steps: u64, ckpt: Option<CkptPath>| {
        let mut m = model(7);
        let mut t = Trainer::new(TrainerConfig {
            max_steps: Some(max_steps),
            enable_checkpointing: true,
            ..quiet(root)
        })
        .expect("trainer");
        t.fit(&mut m, &data(), ckpt).expect("fit")
    };
    let straight = tempfile::tempdir().expect("tempdir");
    let a = run(straight.path(), total, None);

    let interrupted = tempfile::tempdir().expect("tempdir");
    let first = run(interrupted.path(), 57, None); // epoch 1, batch 12 of 45
    assert_eq!(first.progress.epoch, 1);
    assert_eq!(first.progress.batch_in_epoch, 12);
    let b = run(interrupted.path(), total, Some(CkptPath::Last));
    assert_eq!(b.log_dir, first.log_dir, "the resumed run continues in its version folder");
    assert_eq!(b.progress.global_step, total);
    assert_eq!(b.steps_this_run, total - 57);

    let ta = checkpoint_tensors(&a.last_checkpoint.expect("last"));
    let tb = checkpoint_tensors(&b.last_checkpoint.expect("last"));
    assert!(ta.iter().any(|(n, _)| n.ends_with("exp_avg_sq")), "optimizer state is saved");
    assert_eq!(ta.len(), tb.len());
    for ((na, a), (nb, b)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert!(a.equal(b), "{na} differs after resume");
    }
}

#[test]
fn accumulating_k_batches_equals_one_batch_of_k_times_b() {
    let _serial = serial();
    let run = |batch_size: usize, accumulate: usize, steps: u64| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = model(11);
        let data =
            DigitsData::new(DigitsDataConfig { batch_size, ..DigitsDataConfig::default() }).expect("data");
        let mut t = Trainer::new(TrainerConfig {
            max_steps: Some(steps),
            accumulate_grad_batches: accumulate,
            ..quiet(dir.path())
        })
        .expect("trainer");
        t.fit(&mut m, &data, None).expect("fit");
        params(&m)
    };
    let accumulated = run(8, 4, 6);
    let big_batch = run(32, 1, 6);
    let diff = max_abs_diff(&accumulated, &big_batch);
    assert!(diff <= 1e-5, "accumulated vs big batch differ by {diff}");
    let untrained = params(&model(11));
    assert!(max_abs_diff(&accumulated, &untrained) > 1e-4, "training moved the weights");
}

#[test]
fn every_trainable_variable_of_every_zoo_model_gets_a_gradient() {
    let _serial = serial();
    for info in volt_zoo::MODELS {
        let mut digits = None;
        let mut bert = None;
        let mut gpt = None;
        let mut llm = None;
        let vs = match info.name {
            "digits-mlp" => {
                let loader = volt_train::DataModule::train_dataloader(&data()).expect("loader");
                let batch = loader.epoch(0, 0).next().expect("a batch").expect("collate");
                let module = digits.insert(model(0));
                digits_loss(module, &batch).backward();
                module.var_store()
            }
            "minilm" => {
                // Serve-only here, but its BERT must still train (e.g. fine-tuning).
                let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo"))
                    .join("../../.minilm");
                let config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config"))
                    .expect("BERT config");
                let mut b = volt_zoo::bert::Bert::new(&config, Device::Cpu).expect("bert");
                b.load_weights(&dir.join("model.safetensors")).expect("weights (run scripts/setup)");
                let ids = Tensor::from_slice(&[101i64, 7592, 1010, 2088, 999, 102, 0, 0]).view([2, 4]);
                let mask = Tensor::from_slice(&[1i64, 1, 1, 1, 1, 1, 0, 0]).view([2, 4]);
                let bert = bert.insert(b);
                bert.forward(&ids, Some(&mask)).pow_tensor_scalar(2).sum(Kind::Float).backward();
                bert.var_store()
            }
            "char-gpt" => {
                volt_train::seed_everything(0);
                let vocab = volt_zoo::shakespeare::Vocab::shakespeare();
                let m = volt_zoo::CharGpt::new(Default::default(), vocab, Device::Cpu).expect("model");
                let m = gpt.insert(m);
                let data = volt_zoo::ShakespeareData::new(Default::default()).expect("data");
                let loader = volt_train::DataModule::train_dataloader(&data).expect("loader");
                let batch = loader.epoch(0, 0).next().expect("a batch").expect("collate");
                let (x, y) = batch;
                let logits = m.forward_t(&x, true);
                logits.view([-1, logits.size()[2]]).cross_entropy_for_logits(&y.view([-1])).backward();
                m.var_store()
            }
            "smollm2" | "smollm2-lora" => {
                let gguf = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.smollm2"));
                let config =
                    if info.name == "smollm2" { SmolLm2Config::full() } else { SmolLm2Config::lora() };
                let m =
                    llm.insert(SmolLm2::new(SmolLm2Config { gguf, ..config }, Device::Cpu).expect("model"));
                // A fresh adapter's B is zero, which leaves A without gradient: give B values.
                tch::no_grad(|| {
                    for (name, mut t) in m.var_store().variables() {
                        if name.contains(".lora_B.") {
                            t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.02));
                        }
                    }
                });
                let ids = Tensor::from_slice(&[1i64, 9690, 198, 2683, 314, 253, 5356, 30]).view([1, -1]);
                m.model().loss(&ids, &ids, true).expect("loss").backward();
                m.var_store()
            }
            other => panic!("zoo model {other} has no gradient test"),
        };
        // Frozen variables (a LoRA base) are not trainable: they must have no gradient.
        for (name, var) in vs.variables() {
            if !var.requires_grad() {
                assert!(!var.grad().defined(), "{}: frozen {name} has a gradient", info.name);
                continue;
            }
            let g = var.grad();
            assert!(g.defined(), "{}: {name} has no gradient", info.name);
            let norm = g.abs().sum(Kind::Float).double_value(&[]);
            assert!(norm > 0.0, "{}: {name} has an all-zero gradient", info.name);
        }
    }
}

fn digits_loss(m: &mut DigitsMlp, batch: &(Tensor, Tensor)) -> Tensor {
    m.forward(&batch.0).cross_entropy_for_logits(&batch.1)
}

#[test]
fn loading_a_checkpoint_of_another_model_lists_the_mismatches() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut small = DigitsMlp::new(DigitsMlpConfig { hidden: 32, ..DigitsMlpConfig::default() }, Device::Cpu);
    let mut t =
        Trainer::new(TrainerConfig { max_steps: Some(2), enable_checkpointing: true, ..quiet(dir.path()) })
            .expect("trainer");
    let out = t.fit(&mut small, &data(), None).expect("fit");
    let last = out.last_checkpoint.expect("last");
    let before = std::fs::read(&last).expect("read");

    let mut big = model(0);
    let untouched = params(&big);
    let mut t =
        Trainer::new(TrainerConfig { max_steps: Some(4), enable_checkpointing: true, ..quiet(dir.path()) })
            .expect("trainer");
    let err = t.fit(&mut big, &data(), Some(CkptPath::Path(last.clone()))).expect_err("mismatch");
    let msg = err.to_string();
    assert!(msg.contains(&last.display().to_string()), "{msg}");
    assert!(msg.contains("fc1.weight: checkpoint [32, 64], model [256, 64]"), "{msg}");
    assert!(msg.contains("fc3.weight: checkpoint [10, 32], model [10, 256]"), "{msg}");
    assert_eq!(max_abs_diff(&params(&big), &untouched), 0.0, "nothing was half-loaded");
    assert_eq!(std::fs::read(&last).expect("read"), before, "the checkpoint was not touched");
    let versions: Vec<_> = std::fs::read_dir(dir.path().join("lightning_logs")).expect("dir").collect();
    assert_eq!(versions.len(), 1, "the failed run made no version folder");
}

#[test]
fn metrics_csv_and_tensorboard_files_hold_the_logged_values() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = model(0);
    let mut t = Trainer::new(TrainerConfig {
        max_epochs: Some(2),
        log_every_n_steps: 10,
        loggers: vec![LoggerKind::Csv, LoggerKind::TensorBoard],
        ..quiet(dir.path())
    })
    .expect("trainer");
    let out = t.fit(&mut m, &data(), None).expect("fit");
    let log_dir = out.log_dir.expect("log dir");
    assert_eq!(log_dir, dir.path().join("lightning_logs/version_0"));

    let csv = std::fs::read_to_string(log_dir.join("metrics.csv")).expect("metrics.csv");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("epoch,step,train_loss,val_acc,val_loss"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    // 90 steps, a train row every 10 (steps 9, 19, ... 89), a validation row per epoch.
    let train_rows: Vec<&Vec<&str>> = rows.iter().filter(|r| !r[2].is_empty()).collect();
    let val_rows: Vec<&Vec<&str>> = rows.iter().filter(|r| !r[4].is_empty()).collect();
    assert_eq!(train_rows.len(), 9);
    assert_eq!(train_rows[0][1], "9");
    assert_eq!(train_rows[8][1], "89");
    assert_eq!(val_rows.len(), 2);
    assert_eq!((val_rows[0][0], val_rows[0][1]), ("0", "44"));
    assert_eq!((val_rows[1][0], val_rows[1][1]), ("1", "89"));
    let last_val_acc: f64 = val_rows[1][3].parse().expect("number");
    assert_eq!(last_val_acc, out.metrics["val_acc"]);
    assert!(std::fs::read_to_string(log_dir.join("hparams.yaml")).expect("hparams").contains("hidden: 256"));

    let event_file = std::fs::read_dir(&log_dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("events.out.tfevents."))
        .expect("an event file")
        .path();
    let scalars = volt_train::loggers::read_scalars(&event_file).expect("parse");
    let of =
        |tag: &str| scalars.iter().filter(|s| s.tag == tag).map(|s| (s.step, s.value)).collect::<Vec<_>>();
    let tb_train = of("train_loss");
    assert_eq!(tb_train.len(), 9);
    for (row, (step, value)) in train_rows.iter().zip(&tb_train) {
        assert_eq!(row[1], step.to_string());
        let csv_value: f64 = row[2].parse().expect("number");
        assert!((csv_value as f32 - value).abs() < 1e-6);
    }
    assert_eq!(of("val_acc").iter().map(|s| s.0).collect::<Vec<_>>(), vec![44, 89]);
    assert_eq!(of("val_loss").len(), 2);
    assert!(of("epoch").is_empty(), "epoch is a CSV column, not a TensorBoard scalar");

    // TensorBoard's own reader sees the same scalars (volt's reader could share a bug
    // with volt's writer).
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"#;
    let out =
        std::process::Command::new(python()).args(["-c", script]).arg(&log_dir).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: std::collections::BTreeMap<String, Vec<(u64, f32)>> =
        serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(theirs.keys().collect::<Vec<_>>(), ["train_loss", "val_acc", "val_loss"]);
    for (tag, values) in &theirs {
        assert_eq!(values, &of(tag), "{tag} as TensorBoard reads it");
    }
}

/// The Python of scripts/setup's environment. Read at run time: a test binary reused
/// from another checkout must not point there.
fn python() -> std::path::PathBuf {
    let python =
        Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.python");
    assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
    python
}

#[test]
fn python_safetensors_opens_a_volt_checkpoint() {
    let _serial = serial();
    let python = python();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = model(0);
    let mut t =
        Trainer::new(TrainerConfig { max_steps: Some(5), enable_checkpointing: true, ..quiet(dir.path()) })
            .expect("trainer");
    let last = t.fit(&mut m, &data(), None).expect("fit").last_checkpoint.expect("last");
    let script = r#"
import json, sys
from safetensors import safe_open
with safe_open(sys.argv[1], framework="pt") as f:
    state = json.loads(f.metadata()["volt"])
    w = f.get_tensor("model.fc1.weight")
    print(json.dumps({"keys": sorted(f.keys()), "step": state["progress"]["global_step"],
                      "shape": list(w.shape), "sum": float(w.double().sum())}))
"#;
    let out =
        std::process::Command::new(&python).args(["-c", script]).arg(&last).output().expect("run python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(got["step"], 5);
    assert_eq!(got["shape"], serde_json::json!([256, 64]));
    let ours =
        m.var_store().variables()["fc1.weight"].to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
    assert!((got["sum"].as_f64().expect("sum") - ours).abs() < 1e-9);
    let keys: Vec<&str> = got["keys"].as_array().expect("keys").iter().filter_map(|k| k.as_str()).collect();
    assert!(keys.contains(&"optimizer.fc1.weight.exp_avg_sq"), "{keys:?}");
    assert!(keys.contains(&"model.fc3.bias"), "{keys:?}");
}

/// digits-mlp that records the labels of every training batch it sees.
struct OrderProbe {
    inner: DigitsMlp,
    labels: Vec<i64>,
}

impl VoltModule for OrderProbe {
    type Batch = (Tensor, Tensor);
    type Prediction = Tensor;
    fn var_store(&self) -> &nn::VarStore {
        self.inner.var_store()
    }
    fn training_step(
        &mut self,
        batch: &Self::Batch,
        ctx: &mut volt_train::StepContext,
    ) -> volt_train::Result<Tensor> {
        self.labels.extend(Vec::<i64>::try_from(&batch.1).expect("labels"));
        self.inner.training_step(batch, ctx)
    }
    fn configure_optimizers(&self) -> volt_train::OptimizerConfig {
        self.inner.configure_optimizers()
    }
}

#[test]
fn the_run_seed_orders_the_batches_unless_the_data_sets_its_own() {
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let order = |seed: u64, data: &DigitsData| {
        let mut m = OrderProbe { inner: model(0), labels: Vec::new() };
        let cfg = TrainerConfig { seed: Some(seed), max_steps: Some(3), ..quiet(dir.path()) };
        Trainer::new(cfg).expect("trainer").fit(&mut m, data, None).expect("fit");
        m.labels
    };
    let data = data();
    assert_eq!(order(1, &data), order(1, &data), "same seed, same order");
    assert_ne!(order(1, &data), order(2, &data), "--seed seeds the shuffle, as Lightning's seed_everything");
    let pinned =
        DigitsData::new(DigitsDataConfig { seed: Some(7), ..DigitsDataConfig::default() }).expect("data");
    assert_eq!(order(1, &pinned), order(2, &pinned), "an explicit data.seed wins");
}

/// Lightning's precisions on a real model: bf16-mixed reaches the validation loss of
/// 32-true after the same 10 epochs within 10% (a loss near 0.05, where bfloat16 rounding
/// is a few percent; the issue's 2% is measured on SmolLM2, outside CI), and bf16-true
/// still learns the digits.
#[test]
fn bf16_mixed_tracks_32_true_validation_loss() {
    let _serial = serial();
    let run = |precision: volt_train::Precision| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = model(0);
        let config = TrainerConfig { max_epochs: Some(10), precision, ..quiet(dir.path()) };
        let out = Trainer::new(config).expect("trainer").fit(&mut m, &data(), None).expect("fit");
        (out.metrics["val_loss"], out.metrics["val_acc"])
    };
    let (f32_loss, _) = run(volt_train::Precision::F32);
    let (bf16_loss, _) = run(volt_train::Precision::Bf16Mixed);
    let (_, true_acc) = run(volt_train::Precision::Bf16True);
    let ratio = bf16_loss / f32_loss;
    assert!((0.9..=1.1).contains(&ratio), "val_loss 32-true {f32_loss}, bf16-mixed {bf16_loss}");
    assert_ne!(bf16_loss, f32_loss, "bf16-mixed computed in bfloat16, not float32");
    assert!(true_acc > 0.9, "bf16-true val_acc {true_acc}");
}
