//! char-gpt: served by volt-llm's engine, each generation equals a plain full-window
//! forward pass at every step (KV caches, batching, chunked prompts and the slide past
//! the block change no character); penalties and disconnects behave; and a few Trainer
//! steps on Shakespeare lower the validation loss.
use std::sync::mpsc;
use tch::{Device, Kind, Tensor};
use volt_llm::engine::{Event, Request};
use volt_llm::sampling::{Sampler, Sampling};
use volt_llm::{Engine, EngineConfig, Tokenizer};
use volt_train::{BatchLimit, Trainer, TrainerConfig};
use volt_zoo::char_gpt::{CharGpt, CharGptConfig};
use volt_zoo::char_gpt_api::CharTokenizer;
use volt_zoo::shakespeare::{ShakespeareData, ShakespeareDataConfig, Vocab};

fn model(seed: u64) -> CharGpt {
    volt_train::seed_everything(seed);
    CharGpt::new(CharGptConfig::default(), Vocab::shakespeare(), Device::Cpu).expect("model")
}

fn ids(text: &str) -> Vec<u32> {
    CharTokenizer::new(Vocab::shakespeare()).encode(text).expect("encode")
}

/// What `model` generates after `prompt` with a full forward pass over the window at
/// every step: nanoGPT's crop to the last block, moved half a block when it overflows.
fn reference(model: &CharGpt, prompt: &[u32], max_tokens: usize, sampling: &Sampling) -> Vec<u32> {
    let block = model.config().block_size as usize;
    let mut tokens = prompt.to_vec();
    let mut start = tokens.len().saturating_sub(block);
    let mut sampler = Sampler::new(sampling.clone());
    for _ in 0..max_tokens {
        if tokens.len() - start > block {
            start = tokens.len() - block / 2;
        }
        let window: Vec<i64> = tokens[start..].iter().map(|&t| i64::from(t)).collect();
        let logits = tch::no_grad(|| model.forward_t(&Tensor::from_slice(&window).view([1, -1]), false));
        let last = Vec::<f32>::try_from(logits.select(1, -1).squeeze().to_kind(Kind::Float)).expect("row");
        tokens.push(sampler.sample(&last));
    }
    tokens.split_off(prompt.len())
}

/// Submits every request at once; each one's generated tokens, and whether it finished.
fn serve(
    engine: &Engine,
    requests: Vec<(Vec<u32>, usize, Sampling)>,
    hang_up_after: usize,
) -> Vec<(Vec<u32>, bool)> {
    let receivers: Vec<_> = requests
        .into_iter()
        .map(|(prompt, max_tokens, sampling)| {
            let (tx, rx) = mpsc::channel();
            let mut seen = 0;
            let sink = Box::new(move |e: Event| {
                if matches!(e, Event::Token { .. }) {
                    seen += 1;
                }
                tx.send(e).is_ok() && seen < hang_up_after
            });
            let request = Request { prompt, max_tokens, sampling, logprobs: None, echo: false, sink };
            assert!(engine.submit(request).is_ok(), "the engine takes the request");
            rx
        })
        .collect();
    receivers
        .into_iter()
        .map(|rx| {
            let mut tokens = Vec::new();
            let mut finished = false;
            for e in rx.iter() {
                match e {
                    Event::Token { id, .. } => tokens.push(id),
                    Event::Finished { completion_tokens, .. } => {
                        assert_eq!(completion_tokens, tokens.len());
                        finished = true;
                    }
                    Event::Error(e) => panic!("{e}"),
                    Event::PromptLogprobs(_) => {}
                }
            }
            (tokens, finished)
        })
        .collect()
}

#[test]
fn served_generations_equal_a_full_window_forward_at_every_step() {
    let m = model(3);
    let short = ids("ROMEO:\nBut, soft! what");
    let long = ids(&"KING RICHARD III:\nNow is the winter of our discontent ".repeat(3));
    assert!(long.len() > 64, "a prompt longer than the block is cropped to it");
    // 150 characters after a 20-character prompt cross the 64-character block twice.
    let cases = vec![
        (short.clone(), 150, Sampling { top_k: 20, seed: Some(7), ..Sampling::default() }),
        (short.clone(), 150, Sampling { temperature: 0.8, top_p: 0.9, seed: Some(8), ..Sampling::default() }),
        (short.clone(), 40, Sampling { temperature: 0.0, ..Sampling::default() }),
        (
            short.clone(),
            150,
            Sampling { presence_penalty: 0.7, frequency_penalty: 0.3, seed: Some(9), ..Sampling::default() },
        ),
        (long.clone(), 80, Sampling { temperature: 0.0, frequency_penalty: -1.5, ..Sampling::default() }),
        (long, 100, Sampling { seed: Some(10), ..Sampling::default() }),
    ];
    let want: Vec<Vec<u32>> = cases.iter().map(|(p, n, s)| reference(&m, p, *n, s)).collect();
    // Prompts read 7 characters a step in all: chunks land in caches that hold some.
    let config = EngineConfig { max_model_len: 64, prefill_chunk: 7, ..EngineConfig::default() };
    let engine = Engine::start(m, Vec::new(), config).expect("engine");
    let got = serve(&engine, cases.clone(), usize::MAX);
    for ((case, want), (got, finished)) in cases.iter().zip(&want).zip(&got) {
        assert!(finished, "{:?}", case.2);
        assert_eq!(got.len(), case.1);
        assert_eq!(got, want, "{:?}", case.2);
    }
    // The seed decides the draws; another seed gives other text.
    let seeded = |seed| (short.clone(), 60, Sampling { seed: Some(seed), ..Sampling::default() });
    let again = serve(&engine, vec![seeded(1), seeded(1), seeded(2)], usize::MAX);
    assert_eq!(again[0].0, again[1].0);
    assert_ne!(again[0].0, again[2].0);
}

#[test]
fn greedy_generation_with_penalties_spreads_over_more_characters() {
    let engine =
        Engine::start(model(5), Vec::new(), EngineConfig { max_model_len: 64, ..EngineConfig::default() })
            .expect("engine");
    let greedy = Sampling { temperature: 0.0, ..Sampling::default() };
    let penalised = Sampling { presence_penalty: 2.0, frequency_penalty: 2.0, ..greedy.clone() };
    let out = serve(&engine, vec![(ids("KING:"), 60, greedy), (ids("KING:"), 60, penalised)], usize::MAX);
    let distinct = |t: &[u32]| t.iter().collect::<std::collections::HashSet<_>>().len();
    let (plain, spread) = (&out[0].0, &out[1].0);
    // An untrained model's logits lie far closer together than one penalty of 4: every
    // character is used once before any comes back.
    assert_eq!(distinct(&spread[..40]), 40, "{spread:?}");
    assert!(distinct(spread) > distinct(plain), "{plain:?} vs {spread:?}");
}

#[test]
fn a_client_that_hangs_up_gets_nothing_more_and_frees_its_place() {
    // One place: the second request runs only if the first one's was given back.
    let config = EngineConfig { max_model_len: 64, max_num_seqs: 1, ..EngineConfig::default() };
    let engine = Engine::start(model(4), Vec::new(), config).expect("engine");
    let s = Sampling { seed: Some(3), ..Sampling::default() };
    let out = serve(&engine, vec![(ids("KING:"), 50, s.clone())], 10);
    assert!(!out[0].1, "a request whose client left does not finish");
    assert_eq!(out[0].0.len(), 10, "nothing after the sink said the client left");
    let out = serve(&engine, vec![(ids("KING:"), 50, s)], usize::MAX);
    assert_eq!((out[0].0.len(), out[0].1), (50, true));
}

#[test]
fn characters_outside_the_vocabulary_are_dropped_and_tokens_are_their_bytes() {
    let t = CharTokenizer::new(Vocab::shakespeare());
    let got = t.encode("naïve €ok").expect("encode");
    assert_eq!(got, ids("nave ok"));
    let text: Vec<u8> = got.iter().flat_map(|&i| t.token_bytes(i).to_vec()).collect();
    assert_eq!(String::from_utf8(text).expect("utf-8"), "nave ok");
    assert!(t.token_bytes(10_000).is_empty());
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
