//! SmolLM2 on volt's quantized CPU path (weights kept as Q4_1/Q8_0, volt's kernels)
//! against transformers in float32 on the same file (fixtures/llama_reference.json, made
//! by fixtures/make_llama_reference.py), and the property the engine relies on: a row's
//! logits are the same bits whatever it is batched with and however its prompt is cut.
use std::path::PathBuf;
use volt_formats::gguf::Gguf;
use volt_llm::sampling::argmax;
use volt_llm::weights::GgufWeights;
use volt_llm::{Adapter, Model, QuantLlama, Step};

fn file() -> (Vec<u8>, Gguf) {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.smollm2");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", path.display()));
    let g = Gguf::parse(&bytes).expect("gguf");
    (bytes, g)
}

fn model() -> QuantLlama {
    let (bytes, g) = file();
    QuantLlama::from_gguf(&bytes, &g, 2).expect("model")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("fixtures/llama_reference.json")).expect("fixture")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Every position's logits of `tokens` from an empty cache, in one step.
fn forward(m: &QuantLlama, tokens: &[u32], cache: &mut volt_llm::QuantCache) -> Vec<Vec<f32>> {
    m.step(&mut [Step { tokens, cache, all_logits: true }]).expect("step").remove(0)
}

fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    f64::from(max) + row.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln()
}

#[test]
fn quantized_logits_match_transformers_and_greedy_text_is_reported() {
    let m = model();
    let r = reference();
    let mut worst = 0f64;
    for case in r["logits"].as_array().expect("logits") {
        let prompt = ids(&case["ids"]);
        let logits = forward(&m, &prompt, &mut m.new_cache());
        assert_eq!((logits.len(), logits[0].len()), (prompt.len(), 49152));
        for (pos, ((top_ids, top_logits), lse)) in case["top_ids"]
            .as_array()
            .expect("top ids")
            .iter()
            .zip(case["top_logits"].as_array().expect("top logits"))
            .zip(case["logsumexp"].as_array().expect("lse"))
            .enumerate()
        {
            let row = &logits[pos];
            let want_ids = ids(top_ids);
            assert_eq!(argmax(row), want_ids[0], "top-1 at position {pos} of {prompt:?}");
            for (id, want) in want_ids.iter().zip(top_logits.as_array().expect("values")) {
                let d = (f64::from(row[*id as usize]) - want.as_f64().expect("logit")).abs();
                worst = worst.max(d);
                assert!(d < 1e-3, "logit of {id} at position {pos}: off by {d}");
            }
            let d = (logsumexp(row) - lse.as_f64().expect("lse")).abs();
            assert!(d < 1e-3, "logsumexp at position {pos}: off by {d}");
        }
    }
    eprintln!("quantized path: largest logit difference from transformers {worst:.2e}");
    for case in r["greedy"].as_array().expect("greedy") {
        let prompt = ids(&case["prompt"]);
        let want = ids(&case["continuation"]);
        let mut cache = m.new_cache();
        let mut next = argmax(forward(&m, &prompt, &mut cache).last().expect("a row"));
        let mut got = vec![next];
        while got.len() < want.len() {
            next = argmax(&forward(&m, &[next], &mut cache)[0]);
            got.push(next);
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!("quantized path: greedy {same} of {} tokens equal to transformers'", want.len());
        assert_eq!(got, want, "greedy continuation of {prompt:?}");
    }
}

#[test]
fn a_row_gets_the_same_bits_in_any_batch_and_any_cut_of_its_prompt() {
    batch_invariant(&model());
    let (bytes, g) = file();
    let config = volt_llm::LlamaConfig::from_gguf(&g).expect("config");
    let weights = GgufWeights { bytes: &bytes, header: &g };
    batch_invariant(&QuantLlama::from_weights(&weights, config, Some(&adapter(16)), 2).expect("adapted"));
}

/// A LoRA adapter of rank `r` on every linear layer of SmolLM2's 30 blocks, random.
fn adapter(r: i64) -> Adapter {
    tch::manual_seed(3);
    let config = volt_llm::LlamaConfig::from_gguf(&file().1).expect("config");
    let mut tensors = std::collections::HashMap::new();
    for l in config.linear_layers() {
        let random = |shape: [i64; 2]| tch::Tensor::randn(shape, tch::kind::FLOAT_CPU) * 0.03;
        tensors.insert(format!("{}.lora_A.weight", l.hf), random([r, l.cols]));
        tensors.insert(format!("{}.lora_B.weight", l.hf), random([l.rows, r]));
    }
    assert_eq!(tensors.len(), 30 * 7 * 2);
    Adapter::from_tensors(2.0, &tensors).expect("adapter")
}

#[test]
fn an_adapter_gives_the_same_logits_on_the_quantized_and_the_float_path() {
    let (bytes, g) = file();
    let config = volt_llm::LlamaConfig::from_gguf(&g).expect("config");
    let weights = GgufWeights { bytes: &bytes, header: &g };
    // Rank 40: B's rank is padded to whole blocks of 32 on the quantized path.
    let a = adapter(40);
    let tokens: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 504, 713, 216, 34];
    let q = QuantLlama::from_weights(&weights, config.clone(), Some(&a), 2).expect("quantized");
    let adapted = forward(&q, &tokens, &mut q.new_cache());
    let plain = forward(&model(), &tokens, &mut model().new_cache());
    tch::set_num_threads(2);
    let f = volt_llm::Llama::from_weights(&weights, config, Some(&a), tch::Device::Cpu).expect("float");
    let float: Vec<Vec<f32>> =
        Vec::<Vec<f32>>::try_from(f.forward(&tokens, &mut f.new_cache()).expect("forward")).expect("rows");
    let diff = |x: &[Vec<f32>], y: &[Vec<f32>]| {
        x.iter().flatten().zip(y.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
    };
    let (changed, apart) = (diff(&adapted, &plain), diff(&adapted, &float));
    eprintln!("the adapter moves logits by up to {changed}; quantized and float paths differ by {apart}");
    assert!(changed > 0.5, "the adapter changes the logits: {changed}");
    assert!(apart < 2e-3, "quantized vs float path with the adapter: {apart}");
}

#[test]
fn an_adapter_that_does_not_fit_the_model_is_refused_by_name() {
    let (bytes, g) = file();
    let config = volt_llm::LlamaConfig::from_gguf(&g).expect("config");
    let weights = GgufWeights { bytes: &bytes, header: &g };
    let refused = |tensors: &[(&str, &[i64])], says: &str| {
        let tensors: std::collections::HashMap<String, tch::Tensor> = tensors
            .iter()
            .map(|(n, shape)| (n.to_string(), tch::Tensor::zeros(*shape, tch::kind::FLOAT_CPU)))
            .collect();
        let err = Adapter::from_tensors(2.0, &tensors)
            .and_then(|a| QuantLlama::from_weights(&weights, config.clone(), Some(&a), 1).map(|_| ()))
            .expect_err("refused");
        assert!(err.to_string().contains(says), "wanted {says:?} in: {err}");
    };
    refused(&[("model.layers.0.self_attn.q_proj.lora_A.weight", &[8, 576])], "has no lora_B beside it");
    refused(&[("model.layers.0.self_attn.q_proj.lora_B.weight", &[576, 8])], "has no lora_A beside it");
    refused(
        &[
            ("model.layers.30.mlp.up_proj.lora_A.weight", &[8, 576]),
            ("model.layers.30.mlp.up_proj.lora_B.weight", &[1536, 8]),
        ],
        "adapter layer model.layers.30.mlp.up_proj is not a linear layer of this 30-block Llama",
    );
    refused(
        &[
            ("model.layers.2.mlp.down_proj.lora_A.weight", &[8, 576]),
            ("model.layers.2.mlp.down_proj.lora_B.weight", &[576, 8]),
        ],
        "lora_A [8, 576] and lora_B [576, 8] do not fit its weight [576, 1536]",
    );
    refused(&[("model.layers.0.self_attn.q_proj.lora_C.weight", &[8, 576])], "neither lora_A nor lora_B");
}

fn batch_invariant(m: &QuantLlama) {
    let prompts: [&[u32]; 3] = [
        &[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173],
        &[504, 713, 216, 34, 32, 34, 36, 553],
        &[1, 4093, 198, 19556, 1535, 4149, 359, 9531, 30, 2, 198, 1, 520, 9531, 198],
    ];
    // Alone: the whole prompt in one step, then three decoded tokens.
    let alone: Vec<Vec<Vec<f32>>> = prompts
        .iter()
        .map(|p| {
            let mut cache = m.new_cache();
            let mut rows = forward(m, p, &mut cache);
            for _ in 0..3 {
                let next = argmax(rows.last().expect("a row"));
                rows.extend(forward(m, &[next], &mut cache));
            }
            rows
        })
        .collect();
    // Together, each prompt cut differently (5 + rest, 1 + 2 + rest, whole), decoded
    // together after.
    let mut caches: Vec<_> = prompts.iter().map(|_| m.new_cache()).collect();
    let mut together: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    let cuts: [&[usize]; 3] = [&[5], &[1, 3], &[]];
    let mut read = [0usize; 3];
    for round in 0..3 {
        let mut steps = Vec::new();
        let mut who = Vec::new();
        for (i, (cache, p)) in caches.iter_mut().zip(prompts).enumerate() {
            if read[i] == p.len() {
                continue;
            }
            let end = cuts[i].get(round).copied().unwrap_or(p.len());
            steps.push(Step { tokens: &p[read[i]..end], cache, all_logits: true });
            who.push(i);
            read[i] = end;
        }
        if steps.is_empty() {
            break;
        }
        for (i, rows) in who.into_iter().zip(m.step(&mut steps).expect("batched prefill")) {
            together[i].extend(rows);
        }
    }
    for _ in 0..3 {
        let next: Vec<[u32; 1]> = together.iter().map(|r| [argmax(r.last().expect("a row"))]).collect();
        let mut steps: Vec<Step<'_, _>> = next
            .iter()
            .zip(caches.iter_mut())
            .map(|(t, cache)| Step { tokens: t, cache, all_logits: false })
            .collect();
        for (rows, out) in m.step(&mut steps).expect("batched decode").into_iter().zip(&mut together) {
            out.extend(rows);
        }
    }
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.len(), b.len(), "prompt {i}: rows");
        for (pos, (ra, rb)) in a.iter().zip(b).enumerate() {
            assert!(ra == rb, "prompt {i} position {pos}: batched logits differ from alone");
        }
    }
}

#[test]
fn bad_steps_are_errors_and_a_file_with_unreadable_types_is_refused() {
    let m = model();
    let e = m.step(&mut [Step { tokens: &[49152], cache: &mut m.new_cache(), all_logits: false }]);
    assert!(e.unwrap_err().to_string().contains("49152"), "a token past the vocabulary names it");
    let e = m.step(&mut [Step { tokens: &vec![1; 8193], cache: &mut m.new_cache(), all_logits: false }]);
    assert!(e.unwrap_err().to_string().contains("8193 positions"));
    assert!(m.step(&mut [Step { tokens: &[], cache: &mut m.new_cache(), all_logits: false }]).is_err());
    // The weights a decode step reads: the file's quantized bytes, not f32 copies.
    let mb = m.weight_bytes() as f64 / 1e6;
    assert!((90.0..130.0).contains(&mb), "a decode step reads {mb:.0} MB of weights");
}

/// Held-out text (Dickens, public domain) neither path has seen in any fixture.
const HELD_OUT: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, \
it was the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the \
season of Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, \
we had everything before us, we had nothing before us, we were all going direct to Heaven, we were all \
going direct the other way - in short, the period was so far like the present period, that some of its \
noisiest authorities insisted on its being received, for good or for evil, in the superlative degree of \
comparison only.";

/// exp of the mean negative log-likelihood of each token given those before it.
fn perplexity(rows: &[Vec<f32>], tokens: &[u32]) -> f64 {
    let nll: f64 = rows
        .iter()
        .zip(&tokens[1..])
        .map(|(row, &next)| logsumexp(row) - f64::from(row[next as usize]))
        .sum();
    (nll / (tokens.len() - 1) as f64).exp()
}

#[test]
fn quantized_and_float_paths_agree_on_held_out_perplexity() {
    let (bytes, g) = file();
    let tokenizer = volt_llm::GgufTokenizer::from_gguf(&g).expect("tokenizer");
    let tokens = tokenizer.encode(HELD_OUT).expect("tokens");
    assert!(tokens.len() > 100, "{} tokens", tokens.len());
    let q = QuantLlama::from_gguf(&bytes, &g, 2).expect("quantized");
    let quantized = perplexity(&forward(&q, &tokens, &mut q.new_cache()), &tokens);
    tch::set_num_threads(2);
    let f = volt_llm::Llama::from_gguf(&bytes, &g, tch::Device::Cpu).expect("float");
    let logits = f.forward(&tokens, &mut f.new_cache()).expect("float forward");
    let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(logits).expect("rows");
    let float = perplexity(&rows, &tokens);
    eprintln!("held-out perplexity over {} tokens: quantized {quantized:.4}, float {float:.4}", tokens.len());
    assert!((1.5..60.0).contains(&float), "a sane perplexity for English text: {float}");
    assert!((quantized / float - 1.0).abs() < 0.02, "quantized {quantized} vs float {float}");
}
