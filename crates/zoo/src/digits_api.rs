//! digits-mlp behind volt-serve: `POST /predict` with `{"pixels": [64 numbers in 0..16]}`
//! answers `{"digit": n, "probabilities": [10 numbers]}`.
use crate::digits::{MAX_PIXEL, PIXELS};
use crate::digits_mlp::{DigitsMlp, DigitsMlpConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use tch::Tensor;
use volt_serve::{ApiError, Device, InferenceApi};
use volt_train::checkpoint::{restore_model, Checkpoint};

/// Serves a digits-mlp checkpoint written by the Trainer.
pub struct DigitsApi {
    checkpoint: PathBuf,
    config: DigitsMlpConfig,
}

/// One answer.
#[derive(Clone, Debug, PartialEq)]
pub struct DigitPrediction {
    /// The most likely digit.
    pub digit: i64,
    /// Probability of each digit.
    pub probabilities: Vec<f32>,
}

fn device(d: Device) -> tch::Device {
    match d {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(n) => tch::Device::Cuda(n),
    }
}

impl DigitsApi {
    /// Checks that `checkpoint` is readable and reads the model's hyperparameters from it,
    /// so that a bad path fails before the server starts.
    pub fn new(checkpoint: PathBuf) -> volt_train::Result<Self> {
        let ckpt = Checkpoint::load(&checkpoint)?;
        let config = if ckpt.state.hparams.is_null() {
            DigitsMlpConfig::default()
        } else {
            serde_json::from_value(ckpt.state.hparams.clone()).map_err(|e| {
                volt_train::Error::checkpoint(&checkpoint, format!("not a digits-mlp checkpoint: {e}"))
            })?
        };
        // Restore once here as well: a checkpoint of another model fails now, not in a worker.
        let probe = DigitsMlp::new(config.clone(), tch::Device::Cpu);
        restore_model(volt_train::VoltModule::var_store(&probe), &ckpt, &checkpoint)?;
        Ok(DigitsApi { checkpoint, config })
    }

    /// A model on `device` with the checkpoint's weights (each worker reads the file).
    fn load(&self, device: tch::Device) -> volt_train::Result<DigitsMlp> {
        let model = DigitsMlp::new(self.config.clone(), device);
        let ckpt = Checkpoint::load(&self.checkpoint)?;
        restore_model(volt_train::VoltModule::var_store(&model), &ckpt, &self.checkpoint)?;
        Ok(model)
    }
}

impl InferenceApi for DigitsApi {
    type Model = DigitsMlp;
    type Input = [f32; PIXELS];
    type Output = DigitPrediction;

    fn setup(&self, d: Device) -> Result<DigitsMlp, ApiError> {
        self.load(device(d)).map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn decode_request(&self, body: &Value) -> Result<[f32; PIXELS], ApiError> {
        decode_pixels(body)
    }

    fn predict(
        &self,
        model: &mut DigitsMlp,
        inputs: Vec<[f32; PIXELS]>,
    ) -> Result<Vec<DigitPrediction>, ApiError> {
        let n = inputs.len() as i64;
        let flat: Vec<f32> = inputs.iter().flatten().copied().collect();
        let probs = tch::no_grad(|| -> Result<Vec<f32>, tch::TchError> {
            let x = Tensor::f_from_slice(&flat)?.f_view([n, PIXELS as i64])?.f_to_device(model.device())?;
            let p = model.forward(&x).f_softmax(-1, tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?;
            Vec::<f32>::try_from(p.f_flatten(0, -1)?)
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(probs
            .chunks(10)
            .map(|p| {
                let digit =
                    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as i64);
                DigitPrediction { digit, probabilities: p.to_vec() }
            })
            .collect())
    }

    fn encode_response(&self, output: DigitPrediction) -> Result<Value, ApiError> {
        Ok(json!({"digit": output.digit, "probabilities": output.probabilities}))
    }

    fn info(&self) -> Value {
        json!({"model": "digits-mlp", "checkpoint": self.checkpoint, "hparams": self.config})
    }
}

/// `{"pixels": [64 numbers in 0..16]}` as the model's input (scaled to 0..1).
pub fn decode_pixels(body: &Value) -> Result<[f32; PIXELS], ApiError> {
    let pixels = volt_serve::fields::number_list(body, "pixels", PIXELS, 0.0..=f64::from(MAX_PIXEL))?;
    let mut out = [0f32; PIXELS];
    for (slot, x) in out.iter_mut().zip(pixels) {
        *slot = x as f32 / MAX_PIXEL;
    }
    Ok(out)
}
