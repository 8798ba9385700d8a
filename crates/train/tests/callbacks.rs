//! EarlyStopping and ModelCheckpoint on scripted metric sequences.
mod common;

use common::{checkpoint_names, config, PointsData, Scripted};
use volt_train::{
    BatchLimit, Checkpoint, CkptPath, EarlyStopping, Mode, ModelCheckpoint, Trainer, TrainerConfig,
};

#[test]
fn early_stopping_stops_at_the_expected_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Best at epoch 2 (0.5); epochs 3, 4, 5 do not improve by more than min_delta = 0.05.
    let mut m = Scripted::new(vec![1.0, 0.8, 0.5, 0.47, 0.6, 0.46, 0.1, 0.1]);
    let stopper = EarlyStopping { min_delta: 0.05, ..EarlyStopping::new("score", Mode::Min, 3) };
    let mut t = Trainer::new(TrainerConfig { max_epochs: Some(8), ..config(dir.path()) })
        .expect("trainer")
        .with_callback(stopper);
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    assert_eq!(out.progress.epoch, 6, "epochs 0..=5 ran, then it stopped");
    assert!(out.stop_reason.contains("EarlyStopping"), "{}", out.stop_reason);
    assert_eq!(out.metrics["score"], 0.46);
}

#[test]
fn early_stopping_thresholds_and_non_finite_values_stop_at_once() {
    let cases: [(EarlyStopping, Vec<f64>, usize); 3] = [
        (
            EarlyStopping { stopping_threshold: Some(0.3), ..EarlyStopping::new("score", Mode::Min, 100) },
            vec![1.0, 0.5, 0.2, 0.1],
            3,
        ),
        (
            EarlyStopping { divergence_threshold: Some(5.0), ..EarlyStopping::new("score", Mode::Min, 100) },
            vec![1.0, 6.0, 0.2],
            2,
        ),
        (EarlyStopping::new("score", Mode::Max, 100), vec![1.0, 2.0, f64::NAN, 3.0], 3),
    ];
    for (stopper, script, epochs) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Scripted::new(script.clone());
        let mut t = Trainer::new(TrainerConfig { max_epochs: Some(10), ..config(dir.path()) })
            .expect("trainer")
            .with_callback(stopper);
        let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
        assert_eq!(out.progress.epoch, epochs, "script {script:?}: {}", out.stop_reason);
    }
}

#[test]
fn model_checkpoint_keeps_exactly_the_top_k_and_best_resolves_to_the_best() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = vec![0.9, 0.4, 0.7, 0.2, 0.8, 0.3, 0.6];
    let mut m = Scripted::new(script.clone());
    let ckpt = ModelCheckpoint {
        filename: Some("{epoch}-{score:.2f}".into()),
        ..ModelCheckpoint::top_k("score", Mode::Min, 3)
    };
    let mut t = Trainer::new(TrainerConfig { max_epochs: Some(7), ..config(dir.path()) })
        .expect("trainer")
        .with_callback(ckpt);
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    let ckpt_dir = out.log_dir.expect("log dir").join("checkpoints");
    assert_eq!(
        checkpoint_names(&ckpt_dir),
        vec![
            "epoch=1-score=0.40.safetensors",
            "epoch=3-score=0.20.safetensors",
            "epoch=5-score=0.30.safetensors",
            "last.safetensors",
        ]
    );
    let best = ckpt_dir.join("epoch=3-score=0.20.safetensors");
    assert_eq!(out.best_checkpoint.as_deref(), Some(best.as_path()));
    let saved = Checkpoint::load(&best).expect("load");
    // The epoch mean of eight batches of 0.2 is 0.19999999999999998; the checkpoint keeps
    // that value to the bit (it once read back as 0.2 through an inexact float parser).
    let best_score =
        saved.state.callbacks["ModelCheckpoint{monitor=score,mode=Min}"]["best_model_score"].as_f64();
    assert_eq!(best_score, Some(saved.state.metrics["score"]));
    assert!((saved.state.metrics["score"] - 0.2).abs() < 1e-12);
    assert_eq!(saved.state.progress.epoch, 4, "saved after epoch 3 completed");

    // A new trainer (a new process, say) finds "best" through the last checkpoint.
    let fresh = Trainer::new(config(dir.path())).expect("trainer");
    let resolved = fresh.resolve_ckpt_path(&CkptPath::Best).expect("best");
    assert_eq!(resolved.as_deref(), Some(best.as_path()));
    let mut m2 = Scripted::new(script);
    let mut fresh = fresh;
    let metrics =
        fresh.validate(&mut m2, &PointsData { batch_size: 8 }, Some(CkptPath::Best)).expect("validate");
    assert!(metrics.contains_key("val_loss"));
}

#[test]
fn model_checkpoint_monitoring_the_step_keeps_the_latest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![]);
    // Lightning's way to keep the latest k: monitor the step, larger is better.
    let ckpt =
        ModelCheckpoint { every_n_train_steps: Some(5), ..ModelCheckpoint::top_k("step", Mode::Max, 2) };
    let mut t = Trainer::new(TrainerConfig { max_steps: Some(23), ..config(dir.path()) })
        .expect("trainer")
        .with_callback(ckpt);
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    let names = checkpoint_names(&out.log_dir.expect("dir").join("checkpoints"));
    assert_eq!(names, vec!["epoch=1-step=15.safetensors", "epoch=2-step=20.safetensors", "last.safetensors"]);
}

#[test]
fn a_monitor_not_logged_before_any_validation_skips_top_k_and_still_saves_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![0.5; 4]);
    let mut t = Trainer::new(TrainerConfig {
        max_epochs: Some(3),
        limit_val_batches: BatchLimit::Count(0),
        ..config(dir.path())
    })
    .expect("trainer")
    .with_callback(ModelCheckpoint::top_k("score", Mode::Min, 2));
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit keeps its work");
    assert_eq!(out.progress.epoch, 3);
    assert_eq!(m.val_steps, 0);
    assert_eq!(checkpoint_names(&out.log_dir.expect("dir").join("checkpoints")), vec!["last.safetensors"]);
    assert_eq!(out.best_checkpoint, None);
}

#[test]
fn a_monitor_missing_once_validation_has_run_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![0.5; 4]);
    let mut t = Trainer::new(TrainerConfig { max_epochs: Some(3), ..config(dir.path()) })
        .expect("trainer")
        .with_callback(ModelCheckpoint::top_k("scor", Mode::Min, 2));
    let e = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect_err("a typo in the monitor");
    let text = e.to_string();
    assert!(text.contains("\"scor\"") && text.contains("score"), "{text}");
    assert_eq!(m.val_steps, 8, "found at the first validation, not after training");
}

#[test]
fn checkpointing_off_with_a_model_checkpoint_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![]);
    let mut t = Trainer::new(TrainerConfig {
        max_epochs: Some(1),
        enable_checkpointing: false,
        loggers: vec![volt_train::LoggerKind::Csv],
        ..config(dir.path())
    })
    .expect("trainer")
    .with_callback(ModelCheckpoint::default());
    let e = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect_err("refused");
    assert!(e.to_string().contains("enable_checkpointing"), "{e}");
    assert_eq!(m.train_steps, 0);
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing written");
}

#[test]
fn fast_dev_run_skips_model_checkpoint_and_early_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![]);
    let mut t = Trainer::new(TrainerConfig {
        fast_dev_run: volt_train::FastDevRun::Batches(2),
        ..config(dir.path())
    })
    .expect("trainer")
    .with_callback(ModelCheckpoint::top_k("val_loss", Mode::Min, 1))
    .with_callback(EarlyStopping::new("score", Mode::Min, 0));
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    assert_eq!((m.train_steps, m.val_steps), (2, 2));
    assert_eq!(out.progress.global_step, 2);
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none(), "nothing written");
}

#[test]
fn early_stopping_without_a_validation_loop_checks_at_the_end_of_each_training_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![]);
    // The training loss falls, so in `max` mode it never improves after epoch 0.
    let mut t = Trainer::new(TrainerConfig {
        max_epochs: Some(20),
        limit_val_batches: BatchLimit::Count(0),
        ..config(dir.path())
    })
    .expect("trainer")
    .with_callback(EarlyStopping::new("train_loss", Mode::Max, 2));
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    assert!(out.stop_reason.contains("EarlyStopping"), "{}", out.stop_reason);
    assert_eq!(out.progress.epoch, 3, "checked after epochs 0, 1 and 2");
}

/// Records which of the end-of-fit hooks ran, and with what.
struct Ending(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl volt_train::Callback for Ending {
    fn name(&self) -> String {
        "Ending".into()
    }
    fn on_fit_end(&mut self, _ctx: &mut volt_train::CallbackContext) -> volt_train::Result<()> {
        self.0.lock().expect("lock").push("on_fit_end".into());
        Ok(())
    }
    fn on_exception(&mut self, _ctx: &mut volt_train::CallbackContext, e: &volt_train::Error) {
        self.0.lock().expect("lock").push(format!("on_exception: {e}"));
    }
}

#[test]
fn a_failed_fit_calls_on_exception_and_not_on_fit_end_as_lightning_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut m = Scripted::new(vec![]);
    m.nan_at_step = Some(3);
    let mut t = Trainer::new(TrainerConfig { max_epochs: Some(2), ..config(dir.path()) })
        .expect("trainer")
        .with_callback(Ending(seen.clone()));
    t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect_err("NaN loss");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("on_exception: loss is NaN"), "{seen:?}");

    let ok = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut m = Scripted::new(vec![]);
    let mut t = Trainer::new(TrainerConfig { max_epochs: Some(1), ..config(dir.path()) })
        .expect("trainer")
        .with_callback(Ending(ok.clone()));
    t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    assert_eq!(*ok.lock().expect("lock"), vec!["on_fit_end".to_owned()]);
}
