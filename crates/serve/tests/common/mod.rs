//! Test APIs with observable behaviour: they count calls, record what they predicted,
//! sleep, panic or stream on request.
#![allow(dead_code)]
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use volt_serve::{ApiError, Device, InferenceApi, StreamOutput};

/// `{"x": n}` → `{"y": 2n}`. `x = -1` panics inside predict.
#[derive(Clone, Default)]
pub struct Doubler {
    pub delay: Duration,
    pub setup_delay: Duration,
    pub setups: Arc<AtomicUsize>,
    pub predicted: Arc<Mutex<Vec<i64>>>,
    /// Setups that may still succeed (each success takes one); `None`: no limit.
    pub setup_budget: Option<Arc<AtomicUsize>>,
}

impl InferenceApi for Doubler {
    type Model = ();
    type Input = i64;
    type Output = i64;
    fn setup(&self, _device: Device) -> Result<(), ApiError> {
        std::thread::sleep(self.setup_delay);
        if let Some(budget) = &self.setup_budget {
            if budget.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
                return Err(ApiError::Internal("no setup budget left".into()));
            }
        }
        self.setups.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn decode_request(&self, body: &Value) -> Result<i64, ApiError> {
        match body.get("x") {
            None => Err(ApiError::field("x", "is missing")),
            Some(v) => {
                v.as_i64().ok_or_else(|| ApiError::field("x", format!("expected an integer, got {v}")))
            }
        }
    }
    fn predict(&self, _: &mut (), inputs: Vec<i64>) -> Result<Vec<i64>, ApiError> {
        self.predicted.lock().expect("lock").extend(&inputs);
        std::thread::sleep(self.delay);
        if inputs.contains(&-1) {
            panic!("the model cannot take -1");
        }
        Ok(inputs.iter().map(|x| x * 2).collect())
    }
    fn encode_response(&self, y: i64) -> Result<Value, ApiError> {
        Ok(json!({"y": y}))
    }
}

/// `{"n": k}` → k chunks `{"i": 0}`, `{"i": 1}`, ... one every `delay`; with
/// `"fail_after": f`, predict_stream fails after sending f chunks.
#[derive(Clone, Default)]
pub struct Counter {
    pub delay: Duration,
    pub produced: Arc<AtomicUsize>,
}

impl InferenceApi for Counter {
    type Model = ();
    type Input = (usize, Option<usize>);
    type Output = usize;
    fn setup(&self, _device: Device) -> Result<(), ApiError> {
        Ok(())
    }
    fn decode_request(&self, body: &Value) -> Result<(usize, Option<usize>), ApiError> {
        let n = body
            .get("n")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| ApiError::field("n", "expected a count"))?;
        let fail_after = match body.get("fail_after") {
            None => None,
            Some(f) => {
                Some(f.as_u64().ok_or_else(|| ApiError::field("fail_after", "expected a count"))? as usize)
            }
        };
        Ok((n, fail_after))
    }
    fn predict(&self, _: &mut (), _: Vec<(usize, Option<usize>)>) -> Result<Vec<usize>, ApiError> {
        Err(ApiError::Internal("streaming only".into()))
    }
    fn predict_stream(
        &self,
        _: &mut (),
        inputs: Vec<(usize, Option<usize>)>,
        out: &mut StreamOutput<usize>,
    ) -> Result<(), ApiError> {
        let longest = inputs.iter().map(|(n, _)| *n).max().unwrap_or(0);
        for i in 0..longest {
            if out.all_cancelled() {
                break;
            }
            for (k, &(n, fail_after)) in inputs.iter().enumerate() {
                if fail_after == Some(i) {
                    return Err(ApiError::Internal(format!("the counter broke at {i}")));
                }
                if i < n && out.send(k, i) {
                    self.produced.fetch_add(1, Ordering::SeqCst);
                }
            }
            std::thread::sleep(self.delay);
        }
        Ok(())
    }
    fn encode_response(&self, i: usize) -> Result<Value, ApiError> {
        Ok(json!({"i": i}))
    }
}

/// Parses Prometheus text: `name{labels}` → value, for every sample line.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample line: {l:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (name.to_owned(), value)
        })
        .collect()
}

/// The value of the sample named exactly `name` (with its labels), if there is one.
pub fn sample_if_any(samples: &[(String, f64)], name: &str) -> Option<f64> {
    samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// The value of the sample named exactly `name` (with its labels); panics, listing the
/// samples of the same metric, when there is none, so that a misspelt series cannot
/// read as 0.
pub fn sample(samples: &[(String, f64)], name: &str) -> f64 {
    sample_if_any(samples, name).unwrap_or_else(|| {
        let metric = name.split('{').next().unwrap_or(name);
        let same: Vec<&str> =
            samples.iter().map(|(n, _)| n.as_str()).filter(|n| n.starts_with(metric)).collect();
        panic!("no sample named {name}; samples of {metric}: {same:?}")
    })
}
