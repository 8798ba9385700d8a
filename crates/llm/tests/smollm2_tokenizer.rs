//! SmolLM2's tokenizer and chat template, read from its GGUF file, against llama.cpp's
//! tokenizer (fixture made by fixtures/make_tokenizer_reference.py with llama-cpp-python,
//! `vocab_only=True`) and against the prompt the template must render.
use std::path::PathBuf;
use volt_formats::gguf::Gguf;
use volt_llm::{ChatTemplate, GgufTokenizer, Message};

fn smollm2() -> Vec<u8> {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo")).join("../../.smollm2");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", path.display()))
}

fn load() -> (Gguf, GgufTokenizer) {
    let bytes = smollm2();
    let g = Gguf::parse(&bytes).expect("gguf");
    let t = GgufTokenizer::from_gguf(&g).expect("tokenizer");
    (g, t)
}

#[test]
fn the_chat_prompt_renders_and_tokenizes_as_llama_cpp_does() {
    let (g, tok) = load();
    let template = ChatTemplate::from_gguf(&g, "<|im_start|>", "<|im_end|>").expect("template");
    let user = Message { role: "user".into(), content: "What is the capital of France?".into() };
    let prompt = template.render(std::slice::from_ref(&user), true).expect("render");
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "the template's default system prompt, then the generation prompt"
    );
    let ids = tok.encode(&prompt).expect("encode");
    assert_eq!(
        ids,
        [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
            19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
            198
        ]
    );
    assert_eq!(
        tok.decode(&ids).expect("decode").trim_start(),
        prompt.replace("<|im_start|>", "").replace("<|im_end|>", "").trim_start()
    );
    assert!(!tok.add_bos, "SmolLM2's file says add_bos_token = false");
    assert!(tok.end_of_generation.contains(&2), "<|im_end|> ends a turn");

    let system = Message { role: "system".into(), content: "Be brief.".into() };
    let prompt = template.render(&[system, user], false).expect("render");
    assert!(
        prompt.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n") && !prompt.ends_with("assistant\n"),
        "{prompt}"
    );
    let bad = Message { role: "wizard".into(), content: "x".into() };
    assert!(template.render(&[bad], true).unwrap_err().to_string().contains("role \"wizard\""));
}

#[test]
fn digits_are_split_one_by_one_as_the_smollm_pre_tokenizer_does() {
    let (_, tok) = load();
    assert_eq!(
        tok.encode("The year 2024 has 365 days.").expect("encode"),
        [504, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 37, 2009, 30]
    );
    // GPT-2's split alone would give ĠĠ-less pairs here; smollm isolates the digit first.
    assert_eq!(tok.encode("a  1").expect("encode"), [81, 256, 33]);
    assert_eq!(tok.encode("x   42").expect("encode"), [104, 333, 36, 34]);
}

#[test]
fn every_token_stands_for_bytes_that_concatenate_to_the_text() {
    let (_, tok) = load();
    for text in ["héllo wörld", "日本語のテキスト", "emoji 👍🏽 and ✨", "tabs\tand\nnewlines  ", "x\u{4}y"]
    {
        let ids = tok.encode(text).expect("encode");
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id).to_vec()).collect();
        // Bytes the vocabulary has no token for (0x04 here) are dropped, as llama.cpp does.
        assert_eq!(String::from_utf8_lossy(&bytes), text.replace('\u{4}', ""), "{text:?}: {ids:?}");
        assert_eq!(tok.decode(&ids).expect("decode"), text.replace('\u{4}', ""));
    }
    assert!(tok.token_bytes(1).is_empty(), "a control token stands for no text");
}

#[test]
fn varied_text_tokenizes_as_llama_cpps_own_tokenizer_does() {
    let (_, tok) = load();
    let reference: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/tokenizer_reference.json")).expect("fixture");
    let mut differ = Vec::new();
    for case in reference["cases"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        let want: Vec<u32> =
            case["ids"].as_array().expect("ids").iter().map(|v| v.as_u64().expect("id") as u32).collect();
        let got = tok.encode(text).expect("encode");
        if got != want {
            differ.push(format!("{text:?}:\n  volt      {got:?}\n  llama.cpp {want:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} differ:\n{}",
        differ.len(),
        reference["cases"].as_array().map_or(0, Vec::len),
        differ.join("\n")
    );
}
