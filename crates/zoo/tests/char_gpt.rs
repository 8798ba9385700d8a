//! char-gpt: KV-cached generation equals uncached generation, sampling options behave,
//! and a few Trainer steps on Shakespeare lower the validation loss.
use tch::Device;
use volt_train::{BatchLimit, Trainer, TrainerConfig};
use volt_zoo::char_gpt::{apply_penalties, CharGpt, CharGptConfig, Sampling};
use volt_zoo::shakespeare::{ShakespeareData, ShakespeareDataConfig, Vocab};

fn model(seed: u64) -> CharGpt {
    volt_train::seed_everything(seed);
    CharGpt::new(CharGptConfig::default(), Vocab::shakespeare(), Device::Cpu).expect("model")
}

#[test]
fn cached_and_uncached_generation_give_the_same_characters() {
    let m = model(3);
    // 150 characters after a 20-character prompt cross the 64-character window twice.
    for s in [
        Sampling { max_tokens: 150, temperature: 1.0, top_k: Some(20), seed: 7, ..Sampling::default() },
        Sampling { max_tokens: 150, temperature: 0.8, top_p: Some(0.9), seed: 8, ..Sampling::default() },
        Sampling { max_tokens: 40, temperature: 0.0, ..Sampling::default() },
        Sampling {
            max_tokens: 150,
            presence_penalty: 0.7,
            frequency_penalty: 0.3,
            seed: 9,
            ..Sampling::default()
        },
        Sampling { max_tokens: 80, temperature: 0.0, frequency_penalty: -1.5, ..Sampling::default() },
    ] {
        let cached = m.generate("ROMEO:\nBut, soft! what", &s, true, |_| true).expect("cached");
        let uncached = m.generate("ROMEO:\nBut, soft! what", &s, false, |_| true).expect("uncached");
        assert_eq!(cached.chars().count(), s.max_tokens);
        assert_eq!(cached, uncached, "{s:?}");
    }
    // The seed decides the draws; another seed gives other text.
    let a = Sampling { max_tokens: 60, seed: 1, ..Sampling::default() };
    let b = Sampling { seed: 2, ..a.clone() };
    let ga = m.generate("", &a, true, |_| true).expect("a");
    assert_eq!(ga, m.generate("", &a, true, |_| true).expect("a again"));
    assert_ne!(ga, m.generate("", &b, true, |_| true).expect("b"));
}

#[test]
fn penalties_follow_openais_formula() {
    // logit[j] -= count[j] * frequency + (count[j] > 0) * presence
    let mut logits = [1.0f32, 0.9, 0.0, -0.5];
    apply_penalties(&mut logits, &[3, 0, 1, 2], 0.5, 0.1);
    let want = [1.0 - 0.3 - 0.5, 0.9, -0.1 - 0.5, -0.5 - 0.2 - 0.5];
    assert!(logits.iter().zip(want).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-6), "{logits:?}");
    // Negative penalties favour repeats; zero changes nothing.
    let mut logits = [0.0f32, 0.0];
    apply_penalties(&mut logits, &[2, 0], -1.0, -0.25);
    assert_eq!(logits, [1.5, 0.0]);
    let mut logits = [0.25f32, -3.0];
    apply_penalties(&mut logits, &[5, 1], 0.0, 0.0);
    assert_eq!(logits, [0.25, -3.0]);
}

#[test]
fn greedy_generation_with_penalties_spreads_over_more_characters() {
    let m = model(5);
    let greedy = Sampling { max_tokens: 60, temperature: 0.0, ..Sampling::default() };
    let penalised = Sampling { presence_penalty: 2.0, frequency_penalty: 2.0, ..greedy.clone() };
    let plain = m.generate("KING:", &greedy, true, |_| true).expect("plain");
    let spread = m.generate("KING:", &penalised, true, |_| true).expect("penalised");
    let distinct = |t: &str| t.chars().collect::<std::collections::HashSet<_>>().len();
    // An untrained model's logits lie far closer together than one penalty of 4: every
    // character is used once before any comes back.
    let first: String = spread.chars().take(40).collect();
    assert_eq!(distinct(&first), 40, "{spread:?}");
    assert!(distinct(&spread) > distinct(&plain), "{plain:?} vs {spread:?}");
}

#[test]
fn emit_sees_each_character_and_can_stop_generation() {
    let m = model(4);
    let mut seen = String::new();
    let s = Sampling { max_tokens: 50, seed: 3, ..Sampling::default() };
    let out = m
        .generate("KING:", &s, true, |c| {
            seen.push(c);
            seen.chars().count() < 10
        })
        .expect("generate");
    assert_eq!(out, seen);
    assert_eq!(out.chars().count(), 10);
    let e = m.generate("naïve €", &s, true, |_| true).unwrap_err();
    assert!(e.contains("not in the model's vocabulary"), "{e}");
}

#[test]
fn a_few_steps_on_shakespeare_lower_the_validation_loss() {
    let mut m = model(0);
    let data = ShakespeareData::new(ShakespeareDataConfig::default()).expect("data");
    let config = TrainerConfig {
        max_steps: Some(60),
        val_check_interval: BatchLimit::Count(30),
        limit_val_batches: BatchLimit::Count(20),
        num_sanity_val_steps: 0,
        seed: Some(0),
        ..TrainerConfig::default()
    }
    .quiet();
    let before =
        Trainer::new(config.clone()).expect("trainer").validate(&mut m, &data, None).expect("validate");
    let initial = before["val_loss"];
    // A uniform guess over ~65 characters costs ln(65) ≈ 4.2 nats.
    assert!((3.8..4.6).contains(&initial), "untrained val_loss {initial}");
    let out = Trainer::new(config).expect("trainer").fit(&mut m, &data, None).expect("fit");
    let after = out.metrics["val_loss"];
    assert!(after < initial - 0.8, "val_loss {initial} -> {after} after 60 steps");
}
