//! `/v1/chat/completions`: OpenAI's chat completions, plain and streamed, over a [`ChatApi`].
use super::logprobs::{chat_content, TokenLogprob};
use super::now_secs;
use crate::api::{Device, InferenceApi, StreamOutput};
use crate::config::EndpointConfig;
use crate::error::{ApiError, HttpError, ServeError};
use crate::metrics::GenerationMetrics;
use crate::server::{Endpoint, Server};
use crate::stream::{chunks_until, stream_response, Framing};
use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat completion request, as the model sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The `model` field of the request.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate.
    pub max_tokens: Option<usize>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Top-k sampling (an extension OpenAI does not have).
    pub top_k: Option<usize>,
    /// Seed of the sampler.
    pub seed: Option<u64>,
    /// Stop sequences (the adapter enforces them).
    pub stop: Vec<String>,
    /// Stream the answer as chunks.
    pub stream: bool,
    /// Send a final chunk with `usage` (`stream_options.include_usage`).
    pub include_usage: bool,
    /// OpenAI's presence penalty, in [-2, 2] (0 when absent). Non-zero only reaches a
    /// model whose [`ChatApi::supports_penalties`] is true.
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty, in [-2, 2] (0 when absent); as `presence_penalty`.
    pub frequency_penalty: f64,
    /// Report each generated token's log-probability with this many alternatives
    /// (chat's `logprobs` + `top_logprobs`, completions' `logprobs`); `None`: none.
    pub logprobs: Option<usize>,
    /// `/v1/completions`: the raw prompt, which the model reads as it is (no chat
    /// template); `messages` is then empty.
    pub prompt: Option<String>,
    /// `/v1/completions`' `echo`: with `logprobs`, also the prompt tokens' ones.
    pub echo: bool,
    /// The prompt's token ids, when the model's [`ChatApi::check`] already made them, so
    /// that generating does not render and tokenize the prompt a second time.
    pub prompt_tokens: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChatRequest {
    model: Option<String>,
    messages: Vec<RawMessage>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    logprobs: Option<bool>,
    top_logprobs: Option<i64>,
    // Accepted and ignored: it only identifies the end user to the provider.
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawMessage {
    role: String,
    content: MessageContent,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
struct ContentPart {
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

impl StopField {
    pub(super) fn into_list(field: Option<StopField>) -> Vec<String> {
        match field {
            None => vec![],
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        }
    }
}

/// `body` as `T`, or a 400 naming the bad field.
pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::BadRequest(format!("invalid request: {}", e.inner()))
        } else {
            ApiError::field(&path, e.inner())
        }
    })
}

/// The sampling fields both OpenAI generation APIs share, checked as OpenAI does.
pub(super) fn check_sampling(
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
) -> Result<(), ApiError> {
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::field("temperature", format!("{t} is not between 0 and 2")));
        }
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::field("top_p", format!("{p} is not in (0, 1]")));
        }
    }
    // One choice per request: more would need as many generations, and clients that ask
    // for them read `choices[1..]`.
    if let Some(n) = n.filter(|&n| n != 1) {
        return Err(ApiError::field("n", format!("only 1 choice per request is served, not {n}")));
    }
    for (field, p) in [("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty)] {
        if let Some(p) = p.filter(|p| !(-2.0..=2.0).contains(p)) {
            return Err(ApiError::field(field, format!("{p} is not between -2 and 2")));
        }
    }
    Ok(())
}

impl ChatRequest {
    /// Parses an OpenAI chat completions body; errors name the bad field.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let raw: RawChatRequest = parse_body(body)?;
        if raw.messages.is_empty() {
            return Err(ApiError::field("messages", "must hold at least one message"));
        }
        check_sampling(raw.temperature, raw.top_p, raw.n, raw.presence_penalty, raw.frequency_penalty)?;
        let logprobs = match (raw.logprobs.unwrap_or(false), raw.top_logprobs) {
            (_, Some(k)) if !(0..=20).contains(&k) => {
                return Err(ApiError::field("top_logprobs", format!("{k} is not between 0 and 20")))
            }
            (false, Some(k)) if k > 0 => {
                return Err(ApiError::field("top_logprobs", "needs `logprobs`: true"));
            }
            (true, k) => Some(k.unwrap_or(0) as usize),
            (false, _) => None,
        };
        Ok(ChatRequest {
            model: raw.model.unwrap_or_default(),
            messages: raw
                .messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: match m.content {
                        MessageContent::Text(t) => t,
                        MessageContent::Parts(parts) => parts.into_iter().map(|p| p.text).collect(),
                    },
                })
                .collect(),
            max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
            temperature: raw.temperature,
            top_p: raw.top_p,
            top_k: raw.top_k,
            seed: raw.seed,
            stop: StopField::into_list(raw.stop),
            stream: raw.stream,
            include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
            presence_penalty: raw.presence_penalty.unwrap_or(0.0),
            frequency_penalty: raw.frequency_penalty.unwrap_or(0.0),
            logprobs,
            prompt: None,
            echo: false,
            prompt_tokens: None,
        })
    }

    /// Refuses by name what a model that does not implement penalties would ignore.
    pub fn refuse_unsupported(&self, supports_penalties: bool) -> Result<(), ApiError> {
        if !supports_penalties {
            for (field, p) in
                [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
            {
                if p != 0.0 {
                    return Err(ApiError::field(
                        field,
                        "this model does not implement it; leave it out or at 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One piece of generated text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatDelta {
    /// New text (one token, typically).
    pub text: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Set on the last chunk: `stop` or `length`.
    pub finish_reason: Option<String>,
    /// Generated tokens this chunk stands for (its text may be empty: a token holding
    /// part of a UTF-8 character waits for the next), counted in `usage`.
    pub tokens: usize,
    /// With [`ChatRequest::logprobs`]: those of this chunk's generated tokens.
    pub logprobs: Vec<TokenLogprob>,
    /// With [`ChatRequest::echo`] and `logprobs`: prompt tokens (bytes, and their
    /// log-probability, which the first has not), in order, before any generated one.
    pub prompt_logprobs: Vec<(Vec<u8>, Option<TokenLogprob>)>,
}

/// A generative model behind `/v1/chat/completions`.
pub trait ChatApi: Send + Sync + 'static {
    /// A worker's model.
    type Model: Send + 'static;
    /// Loads the model on `device`.
    fn setup(&self, device: Device) -> Result<Self::Model, ApiError>;
    /// Generates for a batch of requests, sending each token as a [`ChatDelta`] through `out`
    /// as soon as it exists; stops generating for a request whose `out.send` returns false.
    fn generate(
        &self,
        model: &mut Self::Model,
        requests: Vec<ChatRequest>,
        out: &mut StreamOutput<ChatDelta>,
    ) -> Result<(), ApiError>;
    /// The model's name in responses.
    fn model_name(&self) -> String;
    /// Receives the endpoint's generation metrics when the endpoint is added: a model with
    /// an engine of its own reports its running and waiting requests and its cache there,
    /// and counts its waiting requests into `queue_depth`. (Latencies and token counts
    /// are recorded by the adapter for every model.)
    fn attach_metrics(&self, _metrics: GenerationMetrics) {}
    /// Refuses a request before it is queued, on the HTTP side, so that a refusal is a
    /// 400 naming the problem even for a stream (a prompt longer than the context, say);
    /// it may keep what it computed on the way in the request (`prompt_tokens`).
    fn check(&self, _request: &mut ChatRequest) -> Result<(), ApiError> {
        Ok(())
    }
    /// Whether `generate` reads [`ChatRequest::prompt`] (a raw prompt, no template) and
    /// honours [`ChatRequest::echo`]: what `/v1/completions` needs.
    fn supports_completions(&self) -> bool {
        false
    }
    /// Whether `generate` applies [`ChatRequest::presence_penalty`] and
    /// [`ChatRequest::frequency_penalty`] as OpenAI does: before each draw,
    /// `logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty`,
    /// counting the tokens generated so far. When false (the default), a request with a
    /// non-zero penalty is refused by name rather than silently ignored.
    fn supports_penalties(&self) -> bool {
        false
    }
}

/// The [`InferenceApi`] that puts a [`ChatApi`] behind the core.
pub struct ChatAdapter<C>(pub C);

impl<C: ChatApi> InferenceApi for ChatAdapter<C> {
    type Model = C::Model;
    type Input = ChatRequest;
    type Output = ChatDelta;
    fn setup(&self, device: Device) -> Result<C::Model, ApiError> {
        self.0.setup(device)
    }
    fn decode_request(&self, body: &Value) -> Result<ChatRequest, ApiError> {
        let mut request = ChatRequest::from_json(body)?;
        request.refuse_unsupported(self.0.supports_penalties())?;
        self.0.check(&mut request)?;
        Ok(request)
    }
    fn predict(&self, _: &mut C::Model, _: Vec<ChatRequest>) -> Result<Vec<ChatDelta>, ApiError> {
        Err(ApiError::Internal("chat completions always stream internally".into()))
    }
    fn encode_response(&self, output: ChatDelta) -> Result<Value, ApiError> {
        Ok(json!({"text": output.text}))
    }
    fn predict_stream(
        &self,
        model: &mut C::Model,
        inputs: Vec<ChatRequest>,
        out: &mut StreamOutput<ChatDelta>,
    ) -> Result<(), ApiError> {
        self.0.generate(model, inputs, out)
    }
    fn info(&self) -> Value {
        json!({"spec": "openai.chat.completions", "model": self.0.model_name()})
    }
}

fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("chatcmpl-volt-{}-{}", now_secs(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Applies stop sequences to generated text: what may be emitted now, and whether to stop.
pub(super) struct StopFilter {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopFilter {
    pub(super) fn new(stops: Vec<String>) -> Self {
        StopFilter { stops, text: String::new(), emitted: 0 }
    }
    pub(super) fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        if let Some(at) =
            self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| self.text.find(s.as_str())).min()
        {
            let out = self.text[self.emitted.min(at)..at].to_owned();
            self.emitted = at;
            return (out, true);
        }
        // Hold back a tail that could still become a stop sequence.
        let hold = self.stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        (out, false)
    }
    pub(super) fn rest(&mut self) -> String {
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }
}

/// `chunks`, recording as they pass the time to the first token and between tokens
/// (from `start`, the request's arrival) and the tokens read and generated.
fn timed(
    chunks: impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send + 'static,
    start: std::time::Instant,
    metrics: GenerationMetrics,
) -> impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send + 'static {
    let mut last: Option<std::time::Instant> = None;
    chunks.inspect(move |item| {
        let Ok(delta) = item else { return };
        if delta.tokens == 0 {
            return;
        }
        let now = std::time::Instant::now();
        match last {
            None => {
                metrics.time_to_first_token.observe((now - start).as_secs_f64());
                metrics.prompt_tokens.inc_by(delta.prompt_tokens as u64);
            }
            Some(t) => metrics.inter_token_latency.observe((now - t).as_secs_f64()),
        }
        metrics.generation_tokens.inc_by(delta.tokens as u64);
        last = Some(now);
    })
}

/// Reads, decodes and queues one generation request under the request timeout; returns
/// what `describe` takes from it, and its chunks, which then run under the stream's
/// deadlines (so a long generation may go on) and are timed into `metrics`.
pub(super) async fn queue_generation<A, T>(
    ep: &Endpoint<A>,
    metrics: GenerationMetrics,
    headers: &HeaderMap,
    body: Body,
    describe: impl FnOnce(&ChatRequest) -> T,
) -> Result<(T, impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send + 'static), HttpError>
where
    A: InferenceApi<Input = ChatRequest, Output = ChatDelta>,
{
    let start = std::time::Instant::now();
    let deadline = ep.deadline();
    let setup = async {
        let value = ep.read_json(headers, body).await?;
        let request = ep.decode(&value)?;
        let deadlines = ep.stream_deadlines(deadline);
        let described = describe(&request);
        let rx = ep.call_stream(request, deadlines.first)?;
        Ok((described, timed(chunks_until(rx, deadlines), start, metrics)))
    };
    ep.by(deadline, setup).await
}

async fn chat_route<C: ChatApi>(
    ep: Arc<Endpoint<ChatAdapter<C>>>,
    metrics: GenerationMetrics,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let describe = |request: &ChatRequest| {
        let model = if request.model.is_empty() { ep.api.0.model_name() } else { request.model.clone() };
        let reply = ChatReply {
            id: completion_id(),
            created: now_secs(),
            model,
            include_usage: request.include_usage,
            want_logprobs: request.logprobs.is_some(),
        };
        (reply, request.stream, StopFilter::new(request.stop.clone()))
    };
    let ((reply, stream, stop), chunks) = match queue_generation(&ep, metrics, &headers, body, describe).await
    {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    if stream {
        stream_chat(chunks, stop, reply, Framing::from_headers(&headers))
    } else {
        collect_chat(chunks, stop, reply).await.unwrap_or_else(IntoResponse::into_response)
    }
}

/// What every object of one chat response carries, and what it was asked to include.
struct ChatReply {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    want_logprobs: bool,
}

impl ChatReply {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    }
    /// A chunk of text, with the log-probabilities waiting for it (taken from `lps`).
    fn content(&self, text: String, lps: &mut Vec<TokenLogprob>) -> Value {
        let mut c = self.chunk(json!({"content": text}), None);
        if self.want_logprobs {
            c["choices"][0]["logprobs"] = json!({"content": chat_content(lps)});
            lps.clear();
        }
        c
    }
}

pub(super) fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn stream_chat(
    chunks: impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send + 'static,
    mut stop: StopFilter,
    r: ChatReply,
    framing: Framing,
) -> Response {
    let first = r.chunk(json!({"role": "assistant", "content": ""}), None);
    let (mut prompt, mut completion, mut finished) = (0usize, 0usize, false);
    // Log-probabilities wait for the chunk that carries their text.
    let mut pending: Vec<TokenLogprob> = Vec::new();
    let body = chunks.map(Some).chain(futures_util::stream::once(async { None })).flat_map(move |item| {
        let mut out: Vec<Result<Value, HttpError>> = Vec::new();
        if finished {
            return futures_util::stream::iter(out);
        }
        match item {
            Some(Ok(delta)) => {
                prompt = prompt.max(delta.prompt_tokens);
                completion += delta.tokens;
                pending.extend(delta.logprobs);
                let (text, hit_stop) = stop.push(&delta.text);
                if !text.is_empty() {
                    out.push(Ok(r.content(text, &mut pending)));
                }
                let finish = if hit_stop { Some("stop".to_owned()) } else { delta.finish_reason };
                if let Some(reason) = finish {
                    let rest = if hit_stop { String::new() } else { stop.rest() };
                    if !rest.is_empty() || !pending.is_empty() {
                        out.push(Ok(r.content(rest, &mut pending)));
                    }
                    out.push(Ok(r.chunk(json!({}), Some(&reason))));
                    if r.include_usage {
                        let mut u = r.chunk(json!({}), None);
                        u["choices"] = json!([]);
                        u["usage"] = usage(prompt, completion);
                        out.push(Ok(u));
                    }
                    finished = true;
                }
            }
            Some(Err(e)) => {
                out.push(Err(e));
                finished = true;
            }
            None => {
                let rest = stop.rest();
                if !rest.is_empty() {
                    out.push(Ok(r.content(rest, &mut pending)));
                }
                out.push(Ok(r.chunk(json!({}), Some("stop"))));
                finished = true;
            }
        }
        futures_util::stream::iter(out)
    });
    // Ending the body once finished drops the receiver, which stops generation.
    stream_response(framing, futures_util::stream::once(async move { Ok(first) }).chain(body))
}

/// A whole generation, gathered from its chunks.
pub(super) struct Gathered {
    /// The text, stop sequences applied.
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// `stop` or `length`.
    pub finish: String,
}

/// Reads `chunks` to the end of the generation (its finish reason or a stop sequence),
/// showing each chunk to `each` first.
pub(super) async fn gather(
    chunks: impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send,
    mut stop: StopFilter,
    mut each: impl FnMut(&ChatDelta),
) -> Result<Gathered, HttpError> {
    let mut chunks = std::pin::pin!(chunks);
    let mut g =
        Gathered { text: String::new(), prompt_tokens: 0, completion_tokens: 0, finish: "stop".into() };
    while let Some(item) = chunks.next().await {
        let delta = item?;
        each(&delta);
        g.prompt_tokens = delta.prompt_tokens;
        g.completion_tokens += delta.tokens;
        let (piece, hit_stop) = stop.push(&delta.text);
        g.text.push_str(&piece);
        if hit_stop {
            break;
        }
        if let Some(reason) = delta.finish_reason {
            g.text.push_str(&stop.rest());
            g.finish = reason;
            break;
        }
    }
    Ok(g)
}

async fn collect_chat(
    chunks: impl futures_util::Stream<Item = Result<ChatDelta, HttpError>> + Send,
    stop: StopFilter,
    r: ChatReply,
) -> Result<Response, HttpError> {
    let mut lps = Vec::new();
    let g = gather(chunks, stop, |delta| lps.extend(delta.logprobs.iter().cloned())).await?;
    let logprobs = if r.want_logprobs { json!({"content": chat_content(&lps)}) } else { Value::Null };
    Ok(Json(json!({
        "id": r.id, "object": "chat.completion", "created": r.created, "model": r.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "logprobs": logprobs,
                     "finish_reason": g.finish}],
        "usage": usage(g.prompt_tokens, g.completion_tokens),
    }))
    .into_response())
}

impl Server {
    /// Serves `api` at `/v1/chat/completions` (or `config.path`), streamed or not.
    pub fn openai_chat<C: ChatApi>(self, mut config: EndpointConfig, api: C) -> Result<Self, ServeError> {
        config.stream = true;
        let model = api.model_name();
        let metrics = self.metrics().generation(&config.path);
        api.attach_metrics(metrics.clone());
        let server = self.add(config, ChatAdapter(api), |ep| {
            post(move |headers: HeaderMap, body: Body| chat_route(ep, metrics.clone(), headers, body))
        })?;
        Ok(server.with_openai_model(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_cut_the_text_even_across_chunks() {
        let mut f = StopFilter { stops: vec!["END".into()], text: String::new(), emitted: 0 };
        let mut out = String::new();
        let mut stopped = false;
        for piece in ["hel", "lo E", "N", "D more"] {
            let (t, s) = f.push(piece);
            out.push_str(&t);
            if s {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(out, "hello ");
    }

    #[test]
    fn chat_requests_name_their_bad_fields() {
        let e = ChatRequest::from_json(&json!({"messages": []})).unwrap_err();
        assert!(e.to_string().contains("`messages`"), "{e}");
        let e = ChatRequest::from_json(
            &json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`temperature`"), "{e}");
        let e = ChatRequest::from_json(
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let r =
            ChatRequest::from_json(&json!({"messages": [{"role": "user", "content": "hi"}], "stop": "\n"}))
                .expect("valid");
        assert_eq!(r.stop, vec!["\n"]);
    }

    #[test]
    fn n_and_penalties_are_checked_and_unsupported_penalties_refused() {
        let ask = |extra: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            ChatRequest::from_json(&body)
        };
        for (extra, field) in [
            (json!({"n": 0}), "n"),
            (json!({"n": 3}), "n"),
            (json!({"n": -1}), "n"),
            (json!({"n": 1e30}), "n"),
            (json!({"presence_penalty": 2.5}), "presence_penalty"),
            (json!({"presence_penalty": -2.000001}), "presence_penalty"),
            (json!({"frequency_penalty": 9}), "frequency_penalty"),
            (json!({"frequency_penalty": [1]}), "frequency_penalty"),
            (json!({"max_tokens": "x"}), "max_tokens"),
        ] {
            let e = ask(extra.clone()).expect_err("refused");
            assert!(e.to_string().starts_with(&format!("`{field}`: ")), "{extra} -> {e}");
        }
        let r = ask(json!({"n": 1, "presence_penalty": -2, "frequency_penalty": 2.0})).expect("valid");
        assert_eq!((r.presence_penalty, r.frequency_penalty), (-2.0, 2.0));
        assert!(r.refuse_unsupported(true).is_ok());
        let e = r.refuse_unsupported(false).expect_err("refused");
        assert!(e.to_string().starts_with("`presence_penalty`: "), "{e}");
        let r = ask(json!({"presence_penalty": 0.0, "frequency_penalty": 0})).expect("valid");
        assert!(r.refuse_unsupported(false).is_ok(), "zero penalties change nothing");
        let e = ChatRequest::from_json(&json!({"messages": [{"role": "user"}]})).expect_err("refused");
        assert!(e.to_string().starts_with("`messages[0]`: "), "{e}");
    }
}
