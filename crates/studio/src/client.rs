//! A client of the control plane's API, as the CLI and tests use it.
use crate::jobs::{Job, JobDetail};
use serde::de::DeserializeOwned;
use serde_json::Value;
use volt_config::LoadedJob;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL.
    #[error("no control plane answers at {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What the connection said.
        why: String,
    },
    /// The control plane refused; its message names why.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The control plane's message.
        message: String,
    },
}

type Result<T> = std::result::Result<T, ClientError>;

/// A control plane at a URL, with a token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// A piece of a node's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogChunk {
    /// The log's size when read.
    pub size: u64,
    /// Its bytes from the offset asked for.
    pub bytes: Vec<u8>,
}

impl Client {
    /// A client of the control plane at `base` (`http://HOST:PORT`).
    pub fn new(base: &str, token: &str) -> Self {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether a control plane answers there.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/api/health", self.base);
        let sent = self.http.get(url).timeout(std::time::Duration::from_secs(2)).send().await;
        sent.is_ok_and(|r| r.status().is_success())
    }

    async fn call<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T> {
        let r = self.send(request).await?;
        r.json().await.map_err(|e| self.unreachable(e))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = request.bearer_auth(&self.token).send().await.map_err(|e| self.unreachable(e))?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let message =
            body["error"]["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned);
        Err(ClientError::Api { status, message })
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), why: e.to_string() }
    }

    /// Launches a job; its id.
    pub async fn launch(&self, job: &LoadedJob) -> Result<i64> {
        let v: Value = self.call(self.http.post(format!("{}/api/jobs", self.base)).json(job)).await?;
        v["id"].as_i64().ok_or_else(|| ClientError::Api { status: 200, message: format!("no id in {v}") })
    }

    /// Every job, newest first.
    pub async fn jobs(&self) -> Result<Vec<Job>> {
        self.call(self.http.get(format!("{}/api/jobs", self.base))).await
    }

    /// A job with its nodes and events.
    pub async fn job(&self, id: i64) -> Result<JobDetail> {
        self.call(self.http.get(format!("{}/api/jobs/{id}", self.base))).await
    }

    /// Asks the control plane to stop a job.
    pub async fn cancel(&self, id: i64) -> Result<()> {
        self.call::<Value>(self.http.post(format!("{}/api/jobs/{id}/cancel", self.base))).await.map(|_| ())
    }

    /// Node `node`'s log of `attempt` (the current one when absent) from byte `offset`.
    pub async fn logs(&self, id: i64, attempt: Option<i64>, node: i64, offset: u64) -> Result<LogChunk> {
        let mut url = format!("{}/api/jobs/{id}/logs?node={node}&offset={offset}", self.base);
        if let Some(a) = attempt {
            url.push_str(&format!("&attempt={a}"));
        }
        let r = self.send(self.http.get(url)).await?;
        let size = r
            .headers()
            .get("x-volt-log-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bytes = r.bytes().await.map_err(|e| self.unreachable(e))?.to_vec();
        Ok(LogChunk { size, bytes })
    }
}
