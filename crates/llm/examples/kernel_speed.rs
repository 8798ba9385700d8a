use std::time::Instant;
use volt_formats::gguf::Gguf;
use volt_llm::kernels::QMatrix;
use volt_llm::{Model, QuantLlama, Step};
fn main() {
    let bytes = std::fs::read(".smollm2").unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    for threads in if std::env::var_os("DECODE_ONLY").is_some() { vec![] } else { vec![1, 2] } {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for (name, r, c) in [
            ("blk.0.ffn_gate.weight", 1536, 576),
            ("blk.0.ffn_down.weight", 576, 1536),
            ("blk.0.attn_k.weight", 192, 576),
            ("token_embd.weight", 49152, 576),
        ] {
            let info = g.tensor(name).unwrap();
            let m = QMatrix::from_gguf(info.kind, g.data(&bytes, info).unwrap(), r, c).unwrap();
            for n in [1usize, 16] {
                let x = vec![0.5f32; n * c];
                let reps = if r > 10000 { 20 } else { 500 };
                let t = Instant::now();
                for _ in 0..reps {
                    std::hint::black_box(m.matmul(&x, n, &pool));
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / reps as f64;
                println!(
                    "threads {threads} {name} n={n}: {us:.0} us  ({:.2} GB/s, {:.1} GFLOP/s)",
                    m.bytes() as f64 / us / 1e3,
                    (2 * r * c * n) as f64 / us / 1e3
                );
            }
        }
    }
    let m = QuantLlama::from_gguf(&bytes, &g, 2).unwrap();
    let mut cache = m.new_cache();
    let prompt: Vec<u32> = (1..40).collect();
    m.step(&mut [Step { tokens: &prompt, cache: &mut cache, all_logits: false }]).unwrap();
    let t = Instant::now();
    for i in 0..200 {
        m.step(&mut [Step { tokens: &[i + 100], cache: &mut cache, all_logits: false }]).unwrap();
    }
    println!("decode step (1 seq): {:.1} ms", t.elapsed().as_secs_f64() * 1e3 / 200.0);
}
