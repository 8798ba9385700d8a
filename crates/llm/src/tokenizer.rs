//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`), built on the
//! `tokenizers` crate: byte-level BPE from the vocabulary and merges, the pre-tokenizer
//! its `tokenizer.ggml.pre` names, control tokens matched whole in the text.
//!
//! `smollm` (SmolLM2's) splits every digit apart before GPT-2's split, as llama.cpp's
//! `LLAMA_VOCAB_PRE_TYPE_SMOLLM` does (`\p{N}` then the GPT-2 regex); `gpt2` is GPT-2's
//! split alone. Others are refused by name rather than tokenized differently from
//! llama.cpp.
use crate::error::{LlmError, Result};
use std::collections::HashMap;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer as HfTokenizer};
use volt_formats::gguf::{Gguf, Value};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Token texts that end a generation wherever a vocabulary has them (chat models' end
/// of turn, which their eos id does not always name).
const END_TOKENS: [&str; 4] = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>"];

/// The pre-tokenizers volt implements, by `tokenizer.ggml.pre`.
pub const SUPPORTED_PRE: [&str; 2] = ["smollm", "gpt2"];

/// What serving needs of a model's tokenizer: text to ids, and each id's bytes for the
/// stream (which holds back a UTF-8 character split across tokens).
pub trait Tokenizer: Send + Sync {
    /// The ids of `text`, as the model reads it (a bos token first if it takes one).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// The bytes `id` stands for (a control token: none).
    fn token_bytes(&self, id: u32) -> &[u8];
}

impl Tokenizer for GgufTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        GgufTokenizer::encode(self, text)
    }
    fn token_bytes(&self, id: u32) -> &[u8] {
        GgufTokenizer::token_bytes(self, id)
    }
}

/// A GGUF file's tokenizer, with its special tokens.
pub struct GgufTokenizer {
    inner: HfTokenizer,
    /// Bytes of every token's text (byte-level symbols mapped back), for streaming.
    bytes: Vec<Vec<u8>>,
    special: Vec<bool>,
    /// The begin-of-sequence token, if the file names one.
    pub bos: Option<u32>,
    /// Whether encoding a prompt starts with `bos` (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Tokens that end a generation (`eos`, `eot`, and `<|endoftext|>`/`<|im_end|>`).
    pub end_of_generation: Vec<u32>,
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>> {
    g.get(key)?
        .as_array()
        .ok_or_else(|| LlmError::model(format!("metadata {key} is not an array")))?
        .iter()
        .map(|v| {
            v.as_str().map(str::to_owned).ok_or_else(|| LlmError::model(format!("{key}: not all strings")))
        })
        .collect()
}

fn token_id(g: &Gguf, key: &str, vocab: usize) -> Result<Option<u32>> {
    match g.metadata.get(key) {
        None => Ok(None),
        Some(v) => {
            v.as_u64().filter(|&id| (id as usize) < vocab).map(|id| Some(id as u32)).ok_or_else(|| {
                LlmError::model(format!("metadata {key} = {v:?} is not a token id below {vocab}"))
            })
        }
    }
}

impl GgufTokenizer {
    /// The tokenizer of `g`, or an error naming the metadata it cannot use.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g.get("tokenizer.ggml.model")?.as_str().unwrap_or_default();
        if model != "gpt2" {
            return Err(LlmError::model(format!(
                "tokenizer.ggml.model = \"{model}\": volt reads byte-level BPE tokenizers (\"gpt2\") only"
            )));
        }
        let pre = g.metadata.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("gpt2");
        if !SUPPORTED_PRE.contains(&pre) {
            return Err(LlmError::model(format!(
                "tokenizer.ggml.pre = \"{pre}\": volt splits text as {} only",
                SUPPORTED_PRE.join(", ")
            )));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match g.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| if let Value::Int(i) = v { *i } else { 1 }).collect(),
            _ => vec![1; tokens.len()],
        };
        let merges = strings(g, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                // llama.cpp splits a merge at its first space after the first character.
                let at = m.char_indices().skip(1).find(|(_, c)| *c == ' ').map(|(i, _)| i);
                at.map(|i| (m[..i].to_owned(), m[i + 1..].to_owned())).ok_or_else(|| {
                    LlmError::model(format!("tokenizer.ggml.merges: \"{m}\" is not two symbols"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LlmError::model(format!("tokenizer: {e}")))?;
        let mut inner = HfTokenizer::new(bpe);
        let byte_level = ByteLevel::new(false, true, true);
        let splits: Vec<PreTokenizerWrapper> = match pre {
            "smollm" => vec![Digits::new(true).into(), byte_level.into()],
            _ => vec![byte_level.into()],
        };
        inner.with_pre_tokenizer(Some(Sequence::new(splits)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<bool> = (0..tokens.len()).map(|i| types.get(i) == Some(&CONTROL)).collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
            .map(|(text, t)| AddedToken::from(text.clone(), *t == CONTROL))
            .collect();
        inner.add_special_tokens(added).map_err(|e| LlmError::model(format!("tokenizer: {e}")))?;
        let n = tokens.len();
        let bos = token_id(g, "tokenizer.ggml.bos_token_id", n)?;
        let add_bos = matches!(g.metadata.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
        let mut end_of_generation = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            end_of_generation.extend(token_id(g, key, n)?);
        }
        for text in END_TOKENS {
            if let Some(id) = tokens.iter().position(|t| t == text) {
                end_of_generation.push(id as u32);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        let unmap = byte_decoder();
        let bytes = tokens
            .iter()
            .zip(&special)
            .map(|(t, &s)| {
                if s {
                    t.as_bytes().to_vec()
                } else {
                    t.chars().flat_map(|c| unmap.get(&c).copied()).collect()
                }
            })
            .collect();
        Ok(GgufTokenizer { inner, bytes, special, bos, add_bos, end_of_generation })
    }

    /// The tokenizer of a Hugging Face folder: its `tokenizer.json` (byte-level BPE),
    /// with the bos and eos of `tokenizer_config.json` and `config.json`, or an error
    /// naming the file.
    pub fn from_hf_folder(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let in_file = |e: String| LlmError::model(format!("{}: {e}", path.display()));
        let inner = HfTokenizer::from_file(&path).map_err(|e| in_file(e.to_string()))?;
        let byte_level = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_))
            && matches!(inner.get_decoder(), Some(tokenizers::DecoderWrapper::ByteLevel(_)));
        if !byte_level {
            return Err(in_file(
                "volt reads byte-level BPE tokenizers (a BPE model, a ByteLevel decoder) only".into(),
            ));
        }
        // A missing file says nothing; a malformed one is an error naming it.
        let read = |name: &str| -> Result<serde_json::Value> {
            if dir.join(name).is_file() {
                crate::weights::read_json(dir, name)
            } else {
                Ok(serde_json::Value::Null)
            }
        };
        let (tok_config, config, generation) =
            (read("tokenizer_config.json")?, read("config.json")?, read("generation_config.json")?);
        let n = inner.get_vocab_size(true);
        let mut texts = vec![String::new(); n];
        for (text, id) in inner.get_vocab(true) {
            if let Some(slot) = texts.get_mut(id as usize) {
                *slot = text;
            }
        }
        let added = inner.get_added_tokens_decoder();
        let special: Vec<bool> = (0..n as u32).map(|id| added.get(&id).is_some_and(|t| t.special)).collect();
        let unmap = byte_decoder();
        let bytes = texts
            .iter()
            .enumerate()
            .map(|(id, t)| match added.get(&(id as u32)) {
                // Added tokens are matched as written, not byte-level symbols.
                Some(_) => t.as_bytes().to_vec(),
                None => t.chars().flat_map(|c| unmap.get(&c).copied()).collect(),
            })
            .collect();
        // A token given as text (`"<|im_end|>"` or `{"content": ...}`), or as an id.
        let by_text = |v: &serde_json::Value| {
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text)
        };
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            match v {
                serde_json::Value::Array(a) => {
                    a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()
                }
                other => other.as_u64().map(|x| x as u32).into_iter().collect(),
            }
        };
        let bos = by_text(&tok_config["bos_token"]).or_else(|| ids(&config["bos_token_id"]).first().copied());
        // Either the config says, or the tokenizer's own post-processor adds it.
        let add_bos = tok_config["add_bos_token"].as_bool().unwrap_or_else(|| {
            let first = |add| inner.encode_fast("a", add).ok().and_then(|e| e.get_ids().first().copied());
            bos.is_some() && first(true) == bos && first(false) != bos
        });
        let mut end_of_generation: Vec<u32> = by_text(&tok_config["eos_token"])
            .into_iter()
            .chain(ids(&config["eos_token_id"]))
            .chain(ids(&generation["eos_token_id"]))
            .chain(END_TOKENS.iter().filter_map(|t| inner.token_to_id(t)))
            .filter(|&id| (id as usize) < n)
            .collect();
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        Ok(GgufTokenizer { inner, bytes, special, bos, add_bos, end_of_generation })
    }

    /// Token ids of `text`; control tokens written in it (`<|im_start|>`) are matched as
    /// tokens, as a chat template's output needs.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc =
            self.inner.encode_fast(text, false).map_err(|e| LlmError::model(format!("tokenizer: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if let (true, Some(bos)) = (self.add_bos, self.bos) {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, control tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| LlmError::model(format!("tokenizer: {e}")))
    }

    /// The bytes a token stands for (a control token: nothing), so that a stream can
    /// hold back the part of a UTF-8 character that the next token completes.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        match self.special.get(id as usize) {
            Some(false) => &self.bytes[id as usize],
            _ => &[],
        }
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// The tokenizer as Hugging Face's `tokenizer.json` (what `tokenizers` and
    /// transformers' fast tokenizers load), with the same splits volt uses: SmolLM2's
    /// digit split included, which transformers' own GGUF conversion leaves out.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(true).map_err(|e| LlmError::model(format!("tokenizer: {e}")))
    }

    /// The id of a token's text, if it is one.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }
}

/// GPT-2's byte-to-symbol table, inverted: bytes that print stand for themselves, the
/// others for the symbols from U+0100 on, in byte order.
fn byte_decoder() -> HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap_or('\u{FFFD}')
            };
            (c, b)
        })
        .collect()
}
