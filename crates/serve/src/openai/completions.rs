//! `/v1/completions`: OpenAI's (legacy) text completions, plain and streamed, over a
//! [`ChatApi`] that reads raw prompts ([`ChatApi::supports_completions`]). Evaluation
//! harnesses score text through it: `echo` with `logprobs` (and `max_tokens` 0) returns
//! the prompt's own tokens' log-probabilities.
use super::chat::{
    check_sampling, gather, parse_body, queue_generation, usage, StopField, StopFilter, StreamOptions,
};
use super::logprobs::{completion_object, TokenLogprob};
use super::now_secs;
use crate::api::{Device, InferenceApi, StreamOutput};
use crate::config::EndpointConfig;
use crate::error::{ApiError, HttpError, ServeError};
use crate::metrics::GenerationMetrics;
use crate::openai::{ChatAdapter, ChatApi, ChatDelta, ChatRequest};
use crate::server::{Endpoint, Server};
use crate::stream::{stream_response, Framing};
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Most alternatives `logprobs` may ask for, as OpenAI allows.
const MAX_LOGPROBS: i64 = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompletionRequest {
    model: Option<String>,
    prompt: PromptField,
    max_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    best_of: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    #[serde(default)]
    echo: bool,
    logprobs: Option<i64>,
    suffix: Option<String>,
    logit_bias: Option<serde_json::Map<String, Value>>,
    // Accepted and ignored: it only identifies the end user to the provider.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// Parses an OpenAI completions body into the request the model sees; errors name the
/// bad field.
pub fn completion_request(body: &Value) -> Result<ChatRequest, ApiError> {
    let raw: RawCompletionRequest = parse_body(body)?;
    let prompt = match raw.prompt {
        PromptField::One(p) => p,
        PromptField::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptField::Many(v) => {
            return Err(ApiError::field(
                "prompt",
                format!("one prompt per request is served, not {} (send them apart)", v.len()),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::field("prompt", "is empty"));
    }
    check_sampling(raw.temperature, raw.top_p, raw.n, raw.presence_penalty, raw.frequency_penalty)?;
    if let Some(b) = raw.best_of.filter(|&b| b != 1) {
        return Err(ApiError::field(
            "best_of",
            format!("only 1 candidate per request is generated, not {b}"),
        ));
    }
    if raw.suffix.is_some() {
        return Err(ApiError::field("suffix", "insertion after a suffix is not supported"));
    }
    if raw.logit_bias.is_some_and(|b| !b.is_empty()) {
        return Err(ApiError::field("logit_bias", "is not supported"));
    }
    if let Some(k) = raw.logprobs.filter(|k| !(0..=MAX_LOGPROBS).contains(k)) {
        return Err(ApiError::field("logprobs", format!("{k} is not between 0 and {MAX_LOGPROBS}")));
    }
    // OpenAI's default; 0 only makes sense when the prompt's scores are wanted.
    let max_tokens = raw.max_tokens.unwrap_or(16);
    if max_tokens == 0 && !raw.echo {
        return Err(ApiError::field(
            "max_tokens",
            "0 generates nothing; it needs `echo` to return the prompt",
        ));
    }
    Ok(ChatRequest {
        model: raw.model.unwrap_or_default(),
        messages: Vec::new(),
        max_tokens: Some(max_tokens),
        temperature: raw.temperature,
        top_p: raw.top_p,
        top_k: raw.top_k,
        seed: raw.seed,
        stop: StopField::into_list(raw.stop),
        stream: raw.stream,
        include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
        presence_penalty: raw.presence_penalty.unwrap_or(0.0),
        frequency_penalty: raw.frequency_penalty.unwrap_or(0.0),
        logprobs: raw.logprobs.map(|k| k as usize),
        prompt: Some(prompt),
        echo: raw.echo,
        prompt_tokens: None,
    })
}

/// The [`InferenceApi`] of `/v1/completions`: the chat adapter with completions' body.
pub struct CompletionAdapter<C>(ChatAdapter<C>);

impl<C: ChatApi> InferenceApi for CompletionAdapter<C> {
    type Model = C::Model;
    type Input = ChatRequest;
    type Output = ChatDelta;
    fn setup(&self, device: Device) -> Result<C::Model, ApiError> {
        self.0.setup(device)
    }
    fn decode_request(&self, body: &Value) -> Result<ChatRequest, ApiError> {
        let mut request = completion_request(body)?;
        request.refuse_unsupported(self.0 .0.supports_penalties())?;
        self.0 .0.check(&mut request)?;
        Ok(request)
    }
    fn predict(&self, model: &mut C::Model, inputs: Vec<ChatRequest>) -> Result<Vec<ChatDelta>, ApiError> {
        self.0.predict(model, inputs)
    }
    fn encode_response(&self, output: ChatDelta) -> Result<Value, ApiError> {
        self.0.encode_response(output)
    }
    fn predict_stream(
        &self,
        model: &mut C::Model,
        inputs: Vec<ChatRequest>,
        out: &mut StreamOutput<ChatDelta>,
    ) -> Result<(), ApiError> {
        self.0.predict_stream(model, inputs, out)
    }
    fn info(&self) -> Value {
        json!({"spec": "openai.completions", "model": self.0 .0.model_name()})
    }
}

fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("cmpl-volt-{}-{}", now_secs(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What a completion's response is made of, gathered from its chunks.
struct Answer {
    id: String,
    created: u64,
    model: String,
    /// The text so far (the prompt first, with `echo`).
    text: String,
    /// Tokens and their log-probabilities, with `logprobs`.
    tokens: Vec<(Vec<u8>, Option<TokenLogprob>)>,
    want_logprobs: bool,
}

impl Answer {
    fn choice(
        &self,
        text: &str,
        tokens: &[(Vec<u8>, Option<TokenLogprob>)],
        offset: usize,
        finish: Option<&str>,
    ) -> Value {
        let logprobs = if self.want_logprobs { completion_object(tokens, offset) } else { Value::Null };
        json!({"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish})
    }
    fn object(&self, choices: Vec<Value>) -> Value {
        json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": choices})
    }
}

/// A chunk's tokens for the `logprobs` object: the prompt's, then the generated ones'.
fn chunk_tokens(delta: &ChatDelta) -> Vec<(Vec<u8>, Option<TokenLogprob>)> {
    let generated = delta.logprobs.iter().map(|t| (t.bytes.clone(), Some(t.clone())));
    delta.prompt_logprobs.iter().cloned().chain(generated).collect()
}

async fn completion_route<C: ChatApi>(
    ep: Arc<Endpoint<CompletionAdapter<C>>>,
    metrics: GenerationMetrics,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let describe = |request: &ChatRequest| {
        let model = if request.model.is_empty() { ep.api.0 .0.model_name() } else { request.model.clone() };
        let answer = Answer {
            id: completion_id(),
            created: now_secs(),
            model,
            text: if request.echo { request.prompt.clone().unwrap_or_default() } else { String::new() },
            tokens: Vec::new(),
            want_logprobs: request.logprobs.is_some(),
        };
        (answer, request.stream, request.include_usage, StopFilter::new(request.stop.clone()))
    };
    let ((answer, stream, include_usage, stop), chunks) =
        match queue_generation(&ep, metrics, &headers, body, describe).await {
            Ok(s) => s,
            Err(e) => return e.into_response(),
        };
    if stream {
        stream_completion(chunks, answer, stop, include_usage, Framing::from_headers(&headers))
    } else {
        collect_completion(chunks, answer, stop).await.unwrap_or_else(IntoResponse::into_response)
    }
}

async fn collect_completion(
    chunks: impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send,
    mut a: Answer,
    stop: StopFilter,
) -> Result<Response, HttpError> {
    let g = gather(chunks, stop, |delta| a.tokens.extend(chunk_tokens(delta))).await?;
    a.text.push_str(&g.text);
    let mut body = a.object(vec![a.choice(&a.text, &a.tokens, 0, Some(&g.finish))]);
    body["usage"] = usage(g.prompt_tokens, g.completion_tokens);
    Ok(Json(body).into_response())
}

fn stream_completion(
    chunks: impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send + 'static,
    a: Answer,
    mut stop: StopFilter,
    include_usage: bool,
    framing: Framing,
) -> Response {
    // With `echo`, the prompt's text comes first, in a chunk of its own: at once, or
    // with `logprobs` once the prompt's scores are in (before the first generated token).
    let mut echo = (!a.text.is_empty()).then(|| a.text.clone());
    let first =
        echo.take_if(|_| !a.want_logprobs).map(|text| Ok(a.object(vec![a.choice(&text, &[], 0, None)])));
    let (mut prompt, mut completion, mut finished) = (0usize, 0usize, false);
    let mut offset = a.text.chars().count();
    let mut pending: Vec<(Vec<u8>, Option<TokenLogprob>)> = Vec::new();
    let body = chunks.map(Some).chain(futures_util::stream::once(async { None })).flat_map(move |item| {
        let mut out: Vec<Result<Value, HttpError>> = Vec::new();
        if finished {
            return futures_util::stream::iter(out);
        }
        let piece = |text: String, tokens: &mut Vec<_>, finish: Option<&str>, offset: &mut usize| {
            let v = a.object(vec![a.choice(&text, tokens, *offset, finish)]);
            *offset += text.chars().count();
            tokens.clear();
            v
        };
        if let Some(Ok(delta)) = &item {
            pending.extend(delta.prompt_logprobs.iter().cloned());
        }
        let scored = matches!(&item, Some(Ok(d)) if d.prompt_logprobs.is_empty());
        if let Some(text) = echo.take_if(|_| scored || item.is_none()) {
            let mut at = 0;
            out.push(Ok(piece(text, &mut pending, None, &mut at)));
        }
        let (finish, hit_stop) = match item {
            Some(Ok(delta)) => {
                prompt = prompt.max(delta.prompt_tokens);
                completion += delta.tokens;
                pending.extend(delta.logprobs.iter().map(|t| (t.bytes.clone(), Some(t.clone()))));
                let (text, hit_stop) = stop.push(&delta.text);
                if !text.is_empty() {
                    out.push(Ok(piece(text, &mut pending, None, &mut offset)));
                }
                (if hit_stop { Some("stop".to_owned()) } else { delta.finish_reason }, hit_stop)
            }
            Some(Err(e)) => {
                out.push(Err(e));
                finished = true;
                (None, false)
            }
            None => (Some("stop".to_owned()), false),
        };
        if let Some(reason) = finish {
            // Past a stop sequence nothing more is sent; otherwise what it held back.
            let rest = if hit_stop { String::new() } else { stop.rest() };
            out.push(Ok(piece(rest, &mut pending, Some(&reason), &mut offset)));
            if include_usage {
                let mut u = a.object(Vec::new());
                u["usage"] = usage(prompt, completion);
                out.push(Ok(u));
            }
            finished = true;
        }
        futures_util::stream::iter(out)
    });
    stream_response(framing, futures_util::stream::iter(first).chain(body))
}

impl Server {
    /// Serves `api` at `/v1/completions` (or `config.path`), streamed or not; `api`
    /// must read raw prompts ([`ChatApi::supports_completions`]).
    pub fn openai_completions<C: ChatApi>(
        self,
        mut config: EndpointConfig,
        api: C,
    ) -> Result<Self, ServeError> {
        if !api.supports_completions() {
            return Err(ServeError::Config(format!(
                "{} answers chats only: it does not read the raw prompts /v1/completions sends",
                api.model_name()
            )));
        }
        config.stream = true;
        let model = api.model_name();
        let metrics = self.metrics().generation(&config.path);
        api.attach_metrics(metrics.clone());
        let server = self.add(config, CompletionAdapter(ChatAdapter(api)), |ep| {
            post(move |headers: HeaderMap, body: Body| completion_route(ep, metrics.clone(), headers, body))
        })?;
        Ok(server.with_openai_model(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_requests_name_their_bad_fields_and_take_openai_defaults() {
        let ask = |extra: Value| {
            let mut body = json!({"prompt": "Once upon a time"});
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            completion_request(&body)
        };
        let r = ask(json!({})).expect("valid");
        assert_eq!((r.max_tokens, r.logprobs, r.echo), (Some(16), None, false));
        assert_eq!(r.prompt.as_deref(), Some("Once upon a time"));
        assert!(r.messages.is_empty());
        let r = ask(json!({"prompt": ["one"], "echo": true, "max_tokens": 0, "logprobs": 0})).expect("valid");
        assert_eq!((r.max_tokens, r.logprobs, r.echo), (Some(0), Some(0), true));
        for (extra, field) in [
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": ["a", "b"]}), "prompt"),
            (json!({"prompt": 7}), "prompt"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": -1}), "max_tokens"),
            (json!({"logprobs": 6}), "logprobs"),
            (json!({"logprobs": -1}), "logprobs"),
            (json!({"n": 2}), "n"),
            (json!({"best_of": 3}), "best_of"),
            (json!({"suffix": "end"}), "suffix"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"unknown_field": 1}), "unknown_field"),
        ] {
            let e = ask(extra.clone()).expect_err("refused").to_string();
            assert!(e.contains(field), "{extra} -> {e}");
        }
        assert!(completion_request(&json!({"messages": []})).is_err(), "a chat body is not a completion");
    }
}
