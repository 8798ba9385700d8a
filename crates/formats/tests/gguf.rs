//! The GGUF reader: small files written here byte by byte (every value type, every tensor
//! type volt reads, every way to cut one short), and the real SmolLM2 file checked against
//! gguf-py, llama.cpp's own reader.
use std::path::PathBuf;
use volt_formats::gguf::{Gguf, TensorType, Value};

/// Writes GGUF v3 the way llama.cpp does, for tests.
#[derive(Default)]
struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    n_tensors: u64,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl Writer {
    fn kv(mut self, key: &str, kind: u32, value: &[u8]) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(kind.to_le_bytes());
        self.kv.extend(value);
        self.n_kv += 1;
        self
    }
    fn tensor(mut self, name: &str, dims: &[u64], kind: u32, data: &[u8]) -> Self {
        while self.data.len() % 32 != 0 {
            self.data.push(0);
        }
        string(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(kind.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(data);
        self.n_tensors += 1;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// One Q4_1 block: scale 0.5, minimum -1, nibbles 0..16 low and 15..0 high.
fn q4_1_block() -> Vec<u8> {
    let mut b = [f16(0.5), f16(-1.0)].concat();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

/// One Q8_0 block: scale 0.25, values -16..16.
fn q8_0_block() -> Vec<u8> {
    let mut b = f16(0.25).to_vec();
    b.extend((-16i8..16).map(|q| q as u8));
    b
}

fn sample() -> Writer {
    let mut array = 8u32.to_le_bytes().to_vec();
    array.extend(2u64.to_le_bytes());
    string(&mut array, "a");
    string(&mut array, "bc");
    let mut name = Vec::new();
    string(&mut name, "tiny");
    Writer::default()
        .kv("general.architecture", 8, &name)
        .kv("u8", 0, &[7])
        .kv("i8", 1, &[0xFF])
        .kv("u16", 2, &513u16.to_le_bytes())
        .kv("i16", 3, &(-2i16).to_le_bytes())
        .kv("u32", 4, &70_000u32.to_le_bytes())
        .kv("i32", 5, &(-70_000i32).to_le_bytes())
        .kv("f32", 6, &1.5f32.to_le_bytes())
        .kv("bool", 7, &[1])
        .kv("strings", 9, &array)
        .kv("u64", 10, &u64::MAX.to_le_bytes())
        .kv("i64", 11, &i64::MIN.to_le_bytes())
        .kv("f64", 12, &0.1f64.to_le_bytes())
        .tensor("f32", &[2, 3], 0, &(0..6).flat_map(|i| (i as f32).to_le_bytes()).collect::<Vec<_>>())
        .tensor("f16", &[4], 1, &[f16(1.0), f16(-2.0), f16(0.5), f16(65504.0)].concat())
        .tensor("q4_1", &[32, 2], 3, &[q4_1_block(), q4_1_block()].concat())
        .tensor("q8_0", &[32], 8, &q8_0_block())
}

#[test]
fn every_value_type_and_every_tensor_type_reads_as_llama_cpp_writes_them() {
    let bytes = sample().bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    assert_eq!(g.version, 3);
    let m = |k: &str| g.metadata[k].clone();
    assert_eq!(m("general.architecture"), Value::String("tiny".into()));
    assert_eq!(
        (m("u8"), m("i8"), m("u16"), m("i16")),
        (Value::Uint(7), Value::Int(-1), Value::Uint(513), Value::Int(-2))
    );
    assert_eq!(
        (m("u32"), m("i32"), m("f32"), m("bool")),
        (Value::Uint(70_000), Value::Int(-70_000), Value::Float(1.5), Value::Bool(true))
    );
    assert_eq!(m("strings"), Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]));
    assert_eq!(
        (m("u64"), m("i64"), m("f64")),
        (Value::Uint(u64::MAX), Value::Int(i64::MIN), Value::Float(0.1))
    );
    assert_eq!(g.data_start % 32, 0);

    let values = |name: &str| g.dequantize(&bytes, g.tensor(name).expect("tensor")).expect("dequantize");
    assert_eq!(values("f32"), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(g.tensor("f32").expect("f32").shape(), vec![3, 2], "PyTorch order: rows of 2");
    assert_eq!(values("f16"), vec![1.0, -2.0, 0.5, 65504.0]);
    let q4 = values("q4_1");
    assert_eq!(q4.len(), 64);
    // Low nibbles are the first 16 weights, high nibbles the last 16.
    assert_eq!(&q4[..3], &[-1.0, -0.5, 0.0]);
    assert_eq!(q4[15], 6.5);
    assert_eq!(&q4[16..18], &[6.5, 6.0]);
    assert_eq!(q4[31], -1.0);
    assert_eq!(&q4[32..64], &q4[..32]);
    let q8 = values("q8_0");
    assert_eq!((q8[0], q8[16], q8[31]), (-4.0, 0.0, 3.75));
}

#[test]
fn a_file_cut_short_anywhere_is_an_error_that_says_so_never_a_panic() {
    let bytes = sample().bytes();
    for len in 0..bytes.len() {
        let cut = &bytes[..len];
        match Gguf::parse(cut) {
            Err(e) => assert!(
                e.to_string().contains("truncated") || e.to_string().contains("more than the file can hold"),
                "cut at {len}: {e}"
            ),
            // Cut inside the data: the header reads, the last tensors do not.
            Ok(g) => {
                let last = g.tensors.last().expect("tensors");
                let e = g.dequantize(cut, last).expect_err("data cut short");
                assert!(e.to_string().contains("truncated") && e.to_string().contains("q8_0"), "{e}");
            }
        }
    }
}

#[test]
fn foreign_files_other_versions_and_other_quantizations_are_refused_by_name() {
    let e = Gguf::parse(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ").unwrap_err();
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    let mut v4 = sample().bytes();
    v4[4] = 4;
    assert!(Gguf::parse(&v4).unwrap_err().to_string().contains("version 4"));

    let bytes = sample().tensor("blk.0.ffn_down.weight", &[256], 12, &[0; 144]).bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    let t = g.tensor("blk.0.ffn_down.weight").expect("tensor");
    assert_eq!(t.kind, TensorType::Other(12, "Q4_K"));
    let e = g.dequantize(&bytes, t).unwrap_err().to_string();
    assert!(e.contains("blk.0.ffn_down.weight") && e.contains("Q4_K"), "{e}");

    // A count the file cannot hold is refused before anything is allocated for it.
    let mut huge = sample().bytes();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(Gguf::parse(&huge).unwrap_err().to_string().contains("tensor count"));
    // Rows that are not whole blocks.
    let bytes = sample().tensor("odd", &[16], 3, &q4_1_block()).bytes();
    let g = Gguf::parse(&bytes).expect("parse");
    let e = g.dequantize(&bytes, g.tensor("odd").expect("odd")).unwrap_err().to_string();
    assert!(e.contains("odd") && e.contains("whole"), "{e}");
}

/// The file scripts/setup links as `.smollm2`.
fn smollm2() -> Vec<u8> {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.smollm2");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", path.display()))
}

#[test]
fn smollm2s_file_reads_as_gguf_py_reads_it() {
    let bytes = smollm2();
    let g = Gguf::parse(&bytes).expect("parse");
    let u = |k: &str| g.get(k).expect(k).as_u64().expect("a number");
    assert_eq!(g.get("general.architecture").expect("arch").as_str(), Some("llama"));
    assert_eq!(
        [u("llama.block_count"), u("llama.embedding_length"), u("llama.feed_forward_length")],
        [30, 576, 1536]
    );
    assert_eq!([u("llama.attention.head_count"), u("llama.attention.head_count_kv")], [9, 3]);
    assert_eq!(g.get("llama.rope.freq_base").expect("rope").as_f64(), Some(100000.0));
    let eps = g.get("llama.attention.layer_norm_rms_epsilon").expect("eps").as_f64().expect("f");
    assert!((eps - 1e-5).abs() < 1e-9);
    assert_eq!(g.get("tokenizer.ggml.tokens").expect("tokens").as_array().map(<[_]>::len), Some(49152));
    assert_eq!(g.get("tokenizer.ggml.pre").expect("pre").as_str(), Some("smollm"));
    assert!(g
        .get("tokenizer.chat_template")
        .expect("template")
        .as_str()
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert!(g.tensor("output.weight").is_err(), "the head is tied to token_embd");

    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/gguf_smollm2_reference.json")).expect("fixture");
    assert_eq!(g.tensors.len() as u64, reference["tensor_count"].as_u64().expect("count"));
    let count = |kind: &str| g.tensors.iter().filter(|t| t.kind.name() == kind).count() as u64;
    for (kind, n) in reference["types"].as_object().expect("types") {
        assert_eq!(count(kind), n.as_u64().expect("n"), "{kind}");
    }
    for (name, want) in reference["tensors"].as_object().expect("tensors") {
        let t = g.tensor(name).expect(name);
        assert_eq!(t.kind.name(), want["type"].as_str().expect("type"), "{name}");
        let shape: Vec<i64> =
            want["shape"].as_array().expect("shape").iter().map(|d| d.as_i64().expect("d")).collect();
        assert_eq!(t.shape(), shape, "{name}");
        let values = g.dequantize(&bytes, t).expect(name);
        for (i, (got, w)) in values.iter().zip(want["first"].as_array().expect("first")).enumerate() {
            assert_eq!(*got, w.as_f64().expect("v") as f32, "{name}[{i}]");
        }
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let sum_sq: f64 = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        assert!(close(sum, want["sum"].as_f64().expect("sum")), "{name}: sum {sum} vs {}", want["sum"]);
        assert!(close(sum_sq, want["sum_sq"].as_f64().expect("sq")), "{name}: sum of squares {sum_sq}");
    }
}
