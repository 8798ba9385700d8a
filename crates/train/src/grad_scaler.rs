//! The gradient scaler of `16-mixed`, PyTorch's `torch.amp.GradScaler` with its
//! defaults: float16's narrow range flushes small gradients to zero, so the loss is
//! multiplied by a scale before backward and the gradients divided by it before the
//! step; a step whose gradients overflowed (inf or NaN) is skipped and the scale halved,
//! and after `growth_interval` clean steps in a row the scale doubles.
use std::sync::{Arc, Mutex, MutexGuard};
use tch::Tensor;
use volt_formats::checkpoint::GradScalerState;

/// PyTorch's `init_scale`.
pub const INIT_SCALE: f64 = 65536.0;
/// PyTorch's `growth_interval`.
pub const GROWTH_INTERVAL: u64 = 2000;

/// A scale, its clean-step count, and this step's unscaling (if done).
#[derive(Debug)]
pub struct GradScaler {
    state: GradScalerState,
    growth_interval: u64,
    /// `Some(found_inf)` once this step's gradients are unscaled.
    unscaled: Option<bool>,
}

/// A scaler shared by the Fabric (which scales the loss) and the optimizer (which
/// unscales and steps).
pub type SharedScaler = Arc<Mutex<GradScaler>>;

impl Default for GradScaler {
    fn default() -> Self {
        GradScaler::new(INIT_SCALE, GROWTH_INTERVAL)
    }
}

impl GradScaler {
    /// A scaler starting at `scale` that doubles after `growth_interval` clean steps.
    pub fn new(scale: f64, growth_interval: u64) -> Self {
        GradScaler {
            state: GradScalerState { scale, growth_tracker: 0 },
            growth_interval: growth_interval.max(1),
            unscaled: None,
        }
    }

    /// One shared between the Fabric and an optimizer.
    pub fn shared(self) -> SharedScaler {
        Arc::new(Mutex::new(self))
    }

    /// The scale and clean-step count (checkpoints hold them).
    pub fn state(&self) -> GradScalerState {
        self.state.clone()
    }

    /// Restores a checkpoint's scale and count.
    pub fn load_state(&mut self, state: &GradScalerState) {
        self.state = state.clone();
        self.unscaled = None;
    }

    /// `loss` times the scale, to backpropagate.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * self.state.scale
    }

    /// Divides `grads` by the scale, once per step (clipping needs them unscaled before
    /// the step does); returns whether any is inf or NaN. One host read per step.
    pub fn unscale(&mut self, grads: &[Tensor]) -> bool {
        if let Some(found) = self.unscaled {
            return found;
        }
        let inv = 1.0 / self.state.scale;
        let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
        let found = tch::no_grad(|| {
            let mut bad: Option<Tensor> = None;
            for g in &defined {
                let _ = g.shallow_clone().g_mul_scalar_(inv);
                let here = g.isfinite().logical_not().any();
                bad = Some(match bad {
                    Some(b) => b.logical_or(&here),
                    None => here,
                });
            }
            bad.is_some_and(|b| b.int64_value(&[]) != 0)
        });
        self.unscaled = Some(found);
        found
    }

    /// Ends the step: whether its update may be applied (its gradients were finite),
    /// and the scale moved as PyTorch's `update()` moves it.
    pub fn finish_step(&mut self, grads: &[Tensor]) -> bool {
        let found = self.unscale(grads);
        self.unscaled = None;
        if found {
            self.state.scale *= 0.5;
            self.state.growth_tracker = 0;
        } else {
            self.state.growth_tracker += 1;
            if self.state.growth_tracker >= self.growth_interval {
                self.state.scale *= 2.0;
                self.state.growth_tracker = 0;
            }
        }
        !found
    }
}

/// The scaler, even if a panicking thread held it (its numbers stay valid).
pub fn lock(s: &SharedScaler) -> MutexGuard<'_, GradScaler> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}
