//! A small HTTP client for volt servers, for tests and for users.
use futures_util::StreamExt;
use serde_json::Value;

/// An HTTP response: status and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Retry-After`, when present.
    pub retry_after: Option<String>,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }
}

/// A client of one server.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: impl Into<String>) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_owned(),
            api_key: None,
        }
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn reply(response: reqwest::Response) -> Result<Reply, reqwest::Error> {
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Reply { status, retry_after, text: response.text().await? })
    }

    /// POSTs JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply, reqwest::Error> {
        Self::reply(self.request(reqwest::Method::POST, path).json(body).send().await?).await
    }

    /// POSTs raw bytes with a JSON content type (to test malformed bodies).
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Reply, reqwest::Error> {
        let r =
            self.request(reqwest::Method::POST, path).header("content-type", "application/json").body(body);
        Self::reply(r.send().await?).await
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Result<Reply, reqwest::Error> {
        Self::reply(self.request(reqwest::Method::GET, path).send().await?).await
    }

    /// POSTs JSON and reads the Server-Sent Events answer; yields each event's `data` as JSON
    /// (`[DONE]` becomes `Value::String("[DONE]")`).
    pub async fn stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<impl futures_util::Stream<Item = Value> + Unpin, reqwest::Error> {
        let response =
            self.request(reqwest::Method::POST, path).json(body).send().await?.error_for_status()?;
        let mut buffer = String::new();
        let events = response.bytes_stream().flat_map(move |chunk| {
            let mut out = Vec::new();
            if let Ok(bytes) = chunk {
                buffer.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    for line in event.lines() {
                        if let Some(data) = line.strip_prefix("data:") {
                            let data = data.trim_start();
                            out.push(
                                serde_json::from_str(data).unwrap_or_else(|_| Value::String(data.to_owned())),
                            );
                        }
                    }
                }
            }
            futures_util::stream::iter(out)
        });
        Ok(Box::pin(events))
    }
}
