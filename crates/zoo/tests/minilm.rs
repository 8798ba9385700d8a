//! all-MiniLM-L6-v2 parity with sentence-transformers: the reference vectors in
//! fixtures/minilm_reference.json were made once by fixtures/make_minilm_reference.py.
#[path = "support/minilm_fixture.rs"]
mod minilm_fixture;

use minilm_fixture::{cosine, model_dir, reference};
use volt_zoo::minilm::{find_model_dir, LoadError, SentenceEncoder};

#[test]
fn embeddings_match_sentence_transformers() {
    let r = reference();
    assert!(r.sentences.len() >= 30);
    assert!(r.sentences.iter().any(String::is_empty), "the fixture has the empty string");
    assert!(r.tokens.contains(&256), "the fixture has inputs truncated at 256 tokens");
    let encoder = SentenceEncoder::load(&model_dir(), tch::Device::Cpu).expect("load");
    assert_eq!(encoder.max_seq_length(), 256);
    // All at once: mixed lengths, sorted and padded per pass inside.
    let all = encoder.encode(&r.sentences).expect("encode");
    assert_eq!(all.len(), r.sentences.len());
    let mut worst = 1.0f64;
    for (i, (e, want)) in all.iter().zip(&r.embeddings).enumerate() {
        assert_eq!(e.vector.len(), 384);
        assert_eq!(e.tokens, r.tokens[i], "token count of sentence {i}: {:?}", r.sentences[i]);
        let c = cosine(&e.vector, want);
        assert!(c >= 0.9999, "sentence {i} {:?}: cosine {c}", r.sentences[i]);
        let norm: f32 = e.vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "sentence {i} is not unit length: {norm}");
        worst = worst.min(c);
    }
    // One at a time (no padding at all) gives the same vectors as the padded batch.
    for (i, s) in r.sentences.iter().enumerate().step_by(5) {
        let alone = encoder.encode(std::slice::from_ref(s)).expect("encode one");
        let c = cosine(&alone[0].vector, &all[i].vector);
        assert!(c >= 0.99999, "sentence {i} alone vs in a batch: cosine {c}");
    }
    println!("worst cosine against sentence-transformers: {worst}");
}

#[test]
fn a_folder_without_the_model_is_named_with_the_missing_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let e = find_model_dir(Some(tmp.path())).unwrap_err();
    assert!(matches!(e, LoadError::File { .. }));
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    assert!(find_model_dir(Some(&model_dir())).is_ok());
}
