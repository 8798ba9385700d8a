//! The Trainer's loop options: validation cadence, batch limits, fast_dev_run, sanity
//! checks, schedulers with the LR monitor, resumed logs, predict.
mod common;

use common::{config, PointsData, Scripted};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use volt_train::{
    BatchLimit, Callback, CallbackContext, CkptPath, FastDevRun, LearningRateMonitor, LoggerKind,
    SchedulerConfig, SchedulerSpec, Trainer, TrainerConfig,
};

/// Counts validation runs seen by callbacks.
struct ValidationCounter(Arc<AtomicUsize>);

impl Callback for ValidationCounter {
    fn name(&self) -> String {
        "ValidationCounter".into()
    }
    fn on_validation_end(&mut self, _ctx: &mut CallbackContext) -> volt_train::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn validations(cfg: TrainerConfig) -> (usize, Scripted) {
    let runs = Arc::new(AtomicUsize::new(0));
    let mut m = Scripted::new(vec![]);
    let mut t = Trainer::new(cfg).expect("trainer").with_callback(ValidationCounter(runs.clone()));
    t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    (runs.load(Ordering::SeqCst), m)
}

#[test]
fn val_check_interval_and_check_val_every_n_epoch_set_the_cadence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = TrainerConfig { max_epochs: Some(4), ..config(dir.path()) };
    let (n, m) = validations(base.clone());
    assert_eq!((n, m.val_steps), (4, 32), "once per epoch, 8 batches each");
    let (n, _) = validations(TrainerConfig { val_check_interval: BatchLimit::Fraction(0.5), ..base.clone() });
    assert_eq!(n, 8, "twice per epoch");
    let (n, _) = validations(TrainerConfig { val_check_interval: BatchLimit::Count(2), ..base.clone() });
    assert_eq!(n, 16, "every 2 of 8 batches");
    let (n, _) = validations(TrainerConfig { check_val_every_n_epoch: Some(2), ..base.clone() });
    assert_eq!(n, 2, "after epochs 1 and 3");
}

#[test]
fn batch_limits_sanity_steps_and_fast_dev_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (n, m) = validations(TrainerConfig {
        max_epochs: Some(2),
        limit_train_batches: BatchLimit::Count(3),
        limit_val_batches: BatchLimit::Fraction(0.25),
        num_sanity_val_steps: 2,
        ..config(dir.path())
    });
    assert_eq!(n, 2);
    assert_eq!(m.train_steps, 6, "3 batches x 2 epochs");
    assert_eq!(m.val_steps, 2 + 2 * 2, "sanity 2, then 2 of 8 batches per epoch");

    let fast = tempfile::tempdir().expect("tempdir");
    let (n, m) = validations(TrainerConfig {
        fast_dev_run: FastDevRun::Flag(true),
        max_epochs: Some(50),
        loggers: vec![LoggerKind::Csv],
        ..config(fast.path())
    });
    assert_eq!((n, m.train_steps, m.val_steps), (1, 1, 1));
    assert!(std::fs::read_dir(fast.path()).expect("dir").next().is_none(), "fast_dev_run writes nothing");
}

#[test]
fn a_step_scheduler_changes_the_lr_and_the_monitor_logs_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![]);
    m.scheduler = Some(SchedulerConfig::every_step(SchedulerSpec::StepLr { step_size: 4, gamma: 0.5 }));
    let mut t = Trainer::new(TrainerConfig {
        max_steps: Some(12),
        log_every_n_steps: 1,
        loggers: vec![LoggerKind::Csv],
        ..config(dir.path())
    })
    .expect("trainer")
    .with_callback(LearningRateMonitor::default());
    let out = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect("fit");
    let csv = std::fs::read_to_string(out.log_dir.expect("dir").join("metrics.csv")).expect("csv");
    let header: Vec<&str> = csv.lines().next().expect("header").split(',').collect();
    let col = header.iter().position(|h| *h == "lr-SGD").expect("lr-SGD column");
    let lrs: Vec<f64> =
        csv.lines().skip(1).filter_map(|l| l.split(',').nth(col).and_then(|v| v.parse().ok())).collect();
    let expected: Vec<f64> = (0..12).map(|i| 0.05 * 0.5f64.powi(i / 4)).collect();
    assert_eq!(lrs, expected, "the rate each step used");
}

#[test]
fn a_resumed_run_appends_to_its_version_folder_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |epochs: usize, ckpt: Option<CkptPath>| {
        let mut m = Scripted::new(vec![]);
        let mut t = Trainer::new(TrainerConfig {
            max_epochs: Some(epochs),
            log_every_n_steps: 4,
            loggers: vec![LoggerKind::Csv],
            ..config(dir.path())
        })
        .expect("trainer");
        t.fit(&mut m, &PointsData { batch_size: 8 }, ckpt).expect("fit")
    };
    let first = run(2, None);
    // A later, unrelated run takes version_1 and has no checkpoint: "last" must still
    // find version_0's, unlike Lightning where the empty new folder can hide it.
    std::fs::create_dir_all(dir.path().join("lightning_logs/version_1")).expect("mkdir");
    let second = run(4, Some(CkptPath::Last));
    assert_eq!(second.log_dir, first.log_dir);
    assert_eq!(second.progress.epoch, 4);
    assert_eq!(second.steps_this_run, 16);
    let csv = std::fs::read_to_string(first.log_dir.expect("dir").join("metrics.csv")).expect("csv");
    assert_eq!(csv.matches("epoch,").count(), 1, "one header");
    let epochs: Vec<&str> = csv.lines().skip(1).map(|l| l.split(',').next().unwrap_or("")).collect();
    for e in ["0", "1", "2", "3"] {
        assert!(epochs.contains(&e), "epoch {e} rows in {csv}");
    }
}

#[test]
fn predict_returns_one_output_per_batch() {
    let mut m = Scripted::new(vec![]);
    struct PredictData;
    impl volt_train::DataModule for PredictData {
        type Batch = (tch::Tensor, tch::Tensor);
        fn predict_dataloader(&self) -> Option<volt_train::DataLoader<Self::Batch>> {
            PointsData { batch_size: 10 }.val_dataloader()
        }
    }
    let mut t = Trainer::new(TrainerConfig::default().quiet()).expect("trainer");
    let out = t.predict(&mut m, &PredictData, None).expect("predict");
    assert_eq!(out.len(), 7, "64 points in batches of 10");
    assert_eq!(out[0].size(), vec![10, 1]);
    assert_eq!(out[6].size(), vec![4, 1]);
}

#[test]
fn val_check_interval_counts_training_batches_not_optimizer_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 8 batches an epoch, 2 optimizer steps an epoch: validation after batches 2, 4, 6, 8.
    let (n, _) = validations(TrainerConfig {
        max_epochs: Some(2),
        accumulate_grad_batches: 4,
        val_check_interval: BatchLimit::Count(2),
        ..config(dir.path())
    });
    assert_eq!(n, 8, "Lightning's val_check_interval counts batches");
}

#[test]
fn val_check_interval_beyond_the_epoch_is_refused_unless_counted_across_epochs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut m = Scripted::new(vec![]);
    let mut t = Trainer::new(TrainerConfig {
        max_epochs: Some(3),
        val_check_interval: BatchLimit::Count(12),
        ..config(dir.path())
    })
    .expect("trainer");
    let e = t.fit(&mut m, &PointsData { batch_size: 8 }, None).expect_err("12 > 8 batches");
    assert!(
        e.to_string().contains("val_check_interval") && e.to_string().contains("check_val_every_n_epoch"),
        "{e}"
    );
    assert_eq!(m.train_steps, 0, "refused before training");

    // Counted across epochs: after batches 12 and 24 of 24.
    let (n, _) = validations(TrainerConfig {
        max_epochs: Some(3),
        val_check_interval: BatchLimit::Count(12),
        check_val_every_n_epoch: None,
        ..config(dir.path())
    });
    assert_eq!(n, 2);
}
