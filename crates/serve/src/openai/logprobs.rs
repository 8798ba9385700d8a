//! Log-probabilities of tokens, as OpenAI's two APIs render them: chat's
//! `logprobs.content` list, and completions' parallel `tokens` / `token_logprobs` /
//! `top_logprobs` / `text_offset` arrays.
use serde_json::{json, Map, Value};

/// One token's log-probability and the most likely alternatives at its position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (part of a UTF-8 character, possibly).
    pub bytes: Vec<u8>,
    /// Its natural-log probability.
    pub logprob: f64,
    /// The most likely tokens there, most likely first: bytes and log-probability.
    pub top: Vec<(Vec<u8>, f64)>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's `logprobs.content` entries for `tokens`.
pub(crate) fn chat_content(tokens: &[TokenLogprob]) -> Vec<Value> {
    tokens
        .iter()
        .map(|t| {
            json!({
                "token": text(&t.bytes), "logprob": t.logprob, "bytes": t.bytes,
                "top_logprobs": t.top.iter()
                    .map(|(b, lp)| json!({"token": text(b), "logprob": lp, "bytes": b}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// Completions' `logprobs` object for `tokens` (`None`: the first prompt token, which
/// has no probability), their text starting at character `offset` of the choice's text.
pub(crate) fn completion_object(tokens: &[(Vec<u8>, Option<TokenLogprob>)], mut offset: usize) -> Value {
    let mut names = Vec::new();
    let mut logprobs = Vec::new();
    let mut tops = Vec::new();
    let mut offsets = Vec::new();
    for (bytes, lp) in tokens {
        let name = text(bytes);
        offsets.push(offset);
        offset += name.chars().count();
        names.push(Value::String(name));
        match lp {
            Some(t) => {
                logprobs.push(json!(t.logprob));
                let mut top = Map::new();
                for (b, v) in &t.top {
                    top.insert(text(b), json!(v));
                }
                tops.push(Value::Object(top));
            }
            None => {
                logprobs.push(Value::Null);
                tops.push(Value::Null);
            }
        }
    }
    json!({"tokens": names, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_renderings_carry_the_tokens_their_probabilities_and_offsets() {
        let t = TokenLogprob {
            bytes: b"hi".to_vec(),
            logprob: -0.5,
            top: vec![(b"hi".to_vec(), -0.5), (b"ho".to_vec(), -1.5)],
        };
        let c = chat_content(std::slice::from_ref(&t));
        assert_eq!(c[0]["token"], "hi");
        assert_eq!(c[0]["bytes"], json!([104, 105]));
        assert_eq!(c[0]["top_logprobs"][1], json!({"token": "ho", "logprob": -1.5, "bytes": [104, 111]}));
        let o = completion_object(&[(b"A".to_vec(), None), (b"hi".to_vec(), Some(t))], 3);
        assert_eq!(o["tokens"], json!(["A", "hi"]));
        assert_eq!(o["token_logprobs"], json!([null, -0.5]));
        assert_eq!(o["top_logprobs"], json!([null, {"hi": -0.5, "ho": -1.5}]));
        assert_eq!(o["text_offset"], json!([3, 4]));
    }
}
