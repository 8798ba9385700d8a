//! SmolLM2 on volt's float path against transformers in float32 on the same GGUF weights
//! (fixture made by fixtures/make_llama_reference.py): the top-20 logits and the
//! logsumexp at every position within 1e-3, the top-1 token everywhere, and greedy
//! continuations of 64 tokens token for token.
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};
use volt_formats::gguf::Gguf;
use volt_llm::Llama;

fn model() -> Llama {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.smollm2");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", path.display()));
    let g = Gguf::parse(&bytes).expect("gguf");
    Llama::from_gguf(&bytes, &g, Device::Cpu).expect("model")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/llama_reference.json")).expect("fixture")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn argmax(row: &Tensor) -> u32 {
    row.argmax(-1, false).int64_value(&[]) as u32
}

#[test]
fn logits_match_transformers_at_every_position_and_greedy_text_token_for_token() {
    tch::set_num_threads(2);
    let m = model();
    let r = reference();
    let mut worst = 0f64;
    for case in r["logits"].as_array().expect("logits") {
        let prompt = ids(&case["ids"]);
        let logits = m.forward(&prompt, &mut m.new_cache()).expect("forward").to_kind(Kind::Double);
        assert_eq!(logits.size(), vec![prompt.len() as i64, 49152]);
        for (pos, ((top_ids, top_logits), lse)) in case["top_ids"]
            .as_array()
            .expect("top ids")
            .iter()
            .zip(case["top_logits"].as_array().expect("top logits"))
            .zip(case["logsumexp"].as_array().expect("lse"))
            .enumerate()
        {
            let row = logits.get(pos as i64);
            let want_ids = ids(top_ids);
            assert_eq!(argmax(&row), want_ids[0], "top-1 at position {pos} of {prompt:?}");
            for (id, want) in want_ids.iter().zip(top_logits.as_array().expect("values")) {
                let got = row.double_value(&[i64::from(*id)]);
                let d = (got - want.as_f64().expect("logit")).abs();
                worst = worst.max(d);
                assert!(d < 1e-3, "logit of {id} at position {pos}: {got} vs {want}");
            }
            let d = (row.logsumexp(-1, false).double_value(&[]) - lse.as_f64().expect("lse")).abs();
            assert!(d < 1e-3, "logsumexp at position {pos}: off by {d}");
        }
    }
    eprintln!("largest logit difference from transformers: {worst:.2e}");

    for case in r["greedy"].as_array().expect("greedy") {
        let prompt = ids(&case["prompt"]);
        let want = ids(&case["continuation"]);
        let mut cache = m.new_cache();
        let mut next = argmax(&m.forward(&prompt, &mut cache).expect("prefill").get(prompt.len() as i64 - 1));
        let mut got = vec![next];
        while got.len() < want.len() {
            next = argmax(&m.forward(&[next], &mut cache).expect("decode").get(0));
            got.push(next);
        }
        assert_eq!(got, want, "greedy continuation of {prompt:?}");
    }
}

#[test]
fn decoding_one_token_at_a_time_gives_the_logits_of_a_whole_prompt() {
    let m = model();
    let prompt = [504u32, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 37, 2009, 30];
    let whole = m.forward(&prompt, &mut m.new_cache()).expect("prefill");
    let mut cache = m.new_cache();
    let mut rows = Vec::new();
    for (i, &t) in prompt.iter().enumerate() {
        // Chunks of 1, then 3 at once: the cache must not care how the prompt arrives.
        if (5..8).contains(&i) {
            if i == 5 {
                rows.push(m.forward(&prompt[5..8], &mut cache).expect("chunk"));
            }
            continue;
        }
        rows.push(m.forward(&[t], &mut cache).expect("step"));
    }
    let stepped = Tensor::cat(&rows, 0);
    let d = (whole - stepped).abs().max().double_value(&[]);
    assert!(d < 1e-3, "cached decoding differs by {d}");
    assert_eq!(cache.len(), prompt.len());

    let e = m.forward(&[49152], &mut m.new_cache()).unwrap_err().to_string();
    assert!(e.contains("49152") && e.contains("vocabulary"), "{e}");
    let mut full = m.new_cache();
    let e = m.forward(&vec![1; 8193], &mut full).unwrap_err().to_string();
    assert!(e.contains("context of 8192"), "{e}");
    assert!(m.forward(&[], &mut full).is_err(), "no tokens is an error, not a panic");
}

#[test]
fn a_batched_step_gives_each_sequence_what_it_gets_alone() {
    let m = model();
    let r = reference();
    let prompts: Vec<Vec<u32>> =
        r["logits"].as_array().expect("logits").iter().map(|c| ids(&c["ids"])).collect();
    // Alone: each prompt, then one more token.
    let alone: Vec<(Tensor, Tensor)> = prompts
        .iter()
        .map(|p| {
            let mut cache = m.new_cache();
            let first = m.forward(p, &mut cache).expect("prefill");
            let next = m.forward(&[argmax(&first.get(p.len() as i64 - 1))], &mut cache).expect("decode");
            (first, next)
        })
        .collect();
    // Together: one step prefills all three (different lengths), the next decodes all three.
    let mut caches: Vec<_> = prompts.iter().map(|_| m.new_cache()).collect();
    let mut steps: Vec<volt_llm::Step<_>> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, cache)| volt_llm::Step { tokens: p, cache, all_logits: true })
        .collect();
    let firsts = m.step_tensors(&mut steps).expect("batched prefill");
    let next: Vec<[u32; 1]> = firsts.iter().map(|f| [argmax(&f.get(f.size()[0] - 1))]).collect();
    let mut steps: Vec<volt_llm::Step<_>> = next
        .iter()
        .zip(caches.iter_mut())
        .map(|(t, cache)| volt_llm::Step { tokens: t, cache, all_logits: false })
        .collect();
    let nexts = m.step_tensors(&mut steps).expect("batched decode");
    for (i, ((first, next), (a_first, a_next))) in firsts.iter().zip(&nexts).zip(&alone).enumerate() {
        let d1 = (first - a_first).abs().max().double_value(&[]);
        let d2 = (next - a_next).abs().max().double_value(&[]);
        assert!(d1 < 1e-3 && d2 < 1e-3, "sequence {i}: prefill off by {d1}, decode by {d2}");
        assert_eq!(argmax(&next.get(0)), argmax(&a_next.get(0)));
    }
}
