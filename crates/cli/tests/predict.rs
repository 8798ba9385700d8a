//! `volt predict` writes its predictions: JSON Lines, one file per rank, each line a
//! sample's index in the predict set and its prediction.
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use support::{stderr, volt};
use volt_train::{DataModule, Sampler};
use volt_zoo::{DigitsData, DigitsDataConfig};

/// The labels of the digits' predict set, in its order.
fn labels() -> Vec<i64> {
    let loader =
        DigitsData::new(DigitsDataConfig::default()).expect("data").predict_dataloader().expect("loader");
    assert_eq!(loader.sampler(), &Sampler::default(), "the predict set is not shuffled");
    loader.epoch(0, 0).flat_map(|b| Vec::<i64>::try_from(&b.expect("batch").1).expect("labels")).collect()
}

/// (index, prediction) of every line of `path`.
fn read(path: &Path) -> Vec<(usize, Vec<f64>)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let index = v["index"].as_u64().expect("index") as usize;
            let p =
                v["prediction"].as_array().expect("prediction").iter().map(|x| x.as_f64().expect("number"));
            (index, p.collect())
        })
        .collect()
}

fn argmax(p: &[f64]) -> i64 {
    p.iter().enumerate().fold((0, f64::MIN), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0 as i64
}

#[test]
fn predict_writes_every_sample_with_its_index_and_they_are_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(&["fit", "--model", "digits-mlp", "--trainer.max_epochs", "3"], &root);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = volt(&["predict", "--model", "digits-mlp", "--ckpt_path", "last"], &root);
    let out = support::stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    let file = root.join("lightning_logs/predictions/predictions-rank0.jsonl");
    assert!(out.contains(&format!("wrote 360 predictions to {}", file.display())), "{out}");
    let rows = read(&file);
    let labels = labels();
    assert_eq!(rows.len(), labels.len());
    let indices: BTreeSet<usize> = rows.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..labels.len()).collect(), "each sample once");
    for (_, p) in &rows {
        assert_eq!(p.len(), 10);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "probabilities: {p:?}");
    }
    let right = rows.iter().filter(|(i, p)| argmax(p) == labels[*i]).count();
    assert!(right as f64 / rows.len() as f64 > 0.9, "{right} of {} right after 3 epochs", rows.len());

    // Another output folder, given in the config; a second run replaces the file whole.
    let elsewhere = dir.path().join("preds");
    for _ in 0..2 {
        let o = volt(
            &[
                "predict",
                "--model",
                "digits-mlp",
                "--ckpt_path",
                "last",
                "--callbacks.prediction_writer.output_dir",
                elsewhere.to_str().expect("utf8"),
            ],
            &root,
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(read(&elsewhere.join("predictions-rank0.jsonl")).len(), 360);
}

#[test]
fn under_ddp_each_rank_writes_its_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("runs");
    let o = volt(&["fit", "--model", "digits-mlp", "--trainer.max_epochs", "1"], &root);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = volt(
        &[
            "predict",
            "--model",
            "digits-mlp",
            "--ckpt_path",
            "last",
            "--trainer.devices",
            "2",
            "--trainer.num_threads",
            "1",
        ],
        &root,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = root.join("lightning_logs/predictions");
    let (a, b) = (read(&dir.join("predictions-rank0.jsonl")), read(&dir.join("predictions-rank1.jsonl")));
    assert_eq!((a.len(), b.len()), (180, 180), "360 samples split evenly");
    let all: BTreeSet<usize> = a.iter().chain(&b).map(|(i, _)| *i).collect();
    assert_eq!(all, (0..360).collect(), "together they cover the set once");
}
