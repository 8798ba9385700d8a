//! SGD, Adam and AdamW with state that volt owns, so that checkpoints hold it exactly.
//!
//! tch's `nn::Optimizer` hides its state tensors, which exact resume needs, so volt owns
//! them. Updates run in libtorch's fused kernels (`_fused_adamw_`, `_fused_adam_`,
//! `_fused_sgd_`, PyTorch's `fused=True` path, on CPU and CUDA), reached through volt's
//! C++ shim since tch does not expose them: one kernel call per step for all parameters.
use crate::ffi;
use crate::grad_scaler::{lock, SharedScaler};

use std::collections::HashMap;
use tch::{nn, Tensor};
pub use volt_config::optim::{ClipAlgorithm, OptimizerConfig, OptimizerSpec};

/// Clips `grads` in place; returns the total norm before clipping (for `Norm`).
pub fn clip_gradients(grads: &[Tensor], max: f64, algorithm: ClipAlgorithm) -> crate::Result<Option<f64>> {
    let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
    if defined.is_empty() {
        return Ok(None);
    }
    tch::no_grad(|| match algorithm {
        ClipAlgorithm::Value => {
            for g in defined {
                let _ = g.shallow_clone().f_clamp_(-max, max)?;
            }
            Ok(None)
        }
        // As torch.nn.utils.clip_grad_norm_: always multiply by the clamped coefficient.
        ClipAlgorithm::Norm => crate::ffi::clip_grad_norm(&defined, max).map(Some),
    })
}

#[derive(Default)]
struct ParamState {
    /// Updates this parameter has received (Adam's bias correction counts per parameter).
    step: u64,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
}

/// An optimizer over the trainable variables of a `VarStore`, in name order.
pub struct Optimizer {
    spec: OptimizerSpec,
    lr: f64,
    step: u64,
    params: Vec<(String, Tensor)>,
    state: Vec<ParamState>,
    scaler: Option<SharedScaler>,
}

impl Optimizer {
    /// An optimizer for every trainable variable of `vs`.
    pub fn new(spec: OptimizerSpec, vs: &nn::VarStore) -> Self {
        let mut params: Vec<(String, Tensor)> =
            vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let state = params.iter().map(|_| ParamState::default()).collect();
        Optimizer { lr: spec.lr(), spec, step: 0, params, state, scaler: None }
    }

    /// The optimizer's configuration.
    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }
    /// The learning rate the next step uses.
    pub fn lr(&self) -> f64 {
        self.lr
    }
    /// Sets the learning rate (schedulers call this).
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }
    /// The parameters, by name.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }
    /// The gradients of the parameters (undefined tensors where none was computed).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).collect()
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Steps with `scaler`'s gradients (`16-mixed`): unscaled before the update, which
    /// is skipped when they overflowed.
    pub fn set_grad_scaler(&mut self, scaler: SharedScaler) {
        self.scaler = Some(scaler);
    }

    /// The gradient scaler, if the run has one.
    pub fn grad_scaler(&self) -> Option<&SharedScaler> {
        self.scaler.as_ref()
    }

    /// Divides the gradients by the scaler's scale (once per step; clipping calls it
    /// before the step); whether any overflowed. Without a scaler: nothing, `false`.
    pub fn unscale_grads(&self) -> bool {
        let grads = self.grads();
        self.scaler.as_ref().is_some_and(|s| lock(s).unscale(&grads))
    }

    /// Applies one update from the current gradients, in one fused libtorch kernel.
    /// With a gradient scaler, an update from gradients that overflowed is skipped (as
    /// `GradScaler.step` skips it): no parameter, state or step count moves.
    pub fn step(&mut self) -> crate::Result<()> {
        if let Some(s) = &self.scaler {
            let grads = self.grads();
            if !lock(s).finish_step(&grads) {
                return Ok(());
            }
        }
        self.step += 1;
        let with_grad: Vec<usize> =
            (0..self.params.len()).filter(|&i| self.params[i].1.grad().defined()).collect();
        if with_grad.is_empty() {
            return Ok(());
        }
        let grads: Vec<Tensor> = with_grad.iter().map(|&i| self.params[i].1.grad()).collect();
        let params: Vec<&Tensor> = with_grad.iter().map(|&i| &self.params[i].1).collect();
        let grads: Vec<&Tensor> = grads.iter().collect();
        match self.spec {
            OptimizerSpec::Adam { betas, eps, weight_decay, .. }
            | OptimizerSpec::AdamW { betas, eps, weight_decay, .. } => {
                for &i in &with_grad {
                    let p = &self.params[i].1;
                    let st = &mut self.state[i];
                    st.exp_avg.get_or_insert_with(|| p.zeros_like());
                    st.exp_avg_sq.get_or_insert_with(|| p.zeros_like());
                    st.step += 1;
                }
                let h = ffi::AdamStep {
                    lr: self.lr,
                    betas,
                    eps,
                    weight_decay,
                    decoupled: matches!(self.spec, OptimizerSpec::AdamW { .. }),
                };
                // Bias correction uses each parameter's own step count (as PyTorch does);
                // parameters with equal counts (normally all of them) share one kernel call.
                let mut counts: Vec<u64> = with_grad.iter().map(|&i| self.state[i].step).collect();
                counts.sort_unstable();
                counts.dedup();
                for count in counts {
                    let group: Vec<usize> =
                        (0..with_grad.len()).filter(|&k| self.state[with_grad[k]].step == count).collect();
                    let step = Tensor::from(count as f32).to_device(params[group[0]].device());
                    let p: Vec<&Tensor> = group.iter().map(|&k| params[k]).collect();
                    let g: Vec<&Tensor> = group.iter().map(|&k| grads[k]).collect();
                    let m: Vec<&Tensor> =
                        group.iter().filter_map(|&k| self.state[with_grad[k]].exp_avg.as_ref()).collect();
                    let v: Vec<&Tensor> =
                        group.iter().filter_map(|&k| self.state[with_grad[k]].exp_avg_sq.as_ref()).collect();
                    let steps: Vec<&Tensor> = vec![&step; group.len()];
                    tch::no_grad(|| ffi::fused_adam(&p, &g, &m, &v, &steps, &h))?;
                }
                Ok(())
            }
            OptimizerSpec::Sgd { momentum, dampening, nesterov, weight_decay, .. } => {
                let h = ffi::SgdStep { lr: self.lr, momentum, dampening, nesterov, weight_decay };
                if momentum == 0.0 {
                    return tch::no_grad(|| ffi::fused_sgd(&params, &grads, &[], &h, false));
                }
                // A parameter's first step initialises its buffer from the gradient; the
                // kernel takes that as one flag, so new and old buffers go in separate calls.
                let (fresh, seen): (Vec<usize>, Vec<usize>) =
                    (0..with_grad.len()).partition(|&k| self.state[with_grad[k]].momentum_buffer.is_none());
                for (first, group) in [(true, fresh), (false, seen)] {
                    if group.is_empty() {
                        continue;
                    }
                    for &k in &group {
                        let i = with_grad[k];
                        let p = &self.params[i].1;
                        self.state[i].momentum_buffer.get_or_insert_with(|| p.zeros_like());
                    }
                    let p: Vec<&Tensor> = group.iter().map(|&k| params[k]).collect();
                    let g: Vec<&Tensor> = group.iter().map(|&k| grads[k]).collect();
                    let b: Vec<&Tensor> = group
                        .iter()
                        .filter_map(|&k| self.state[with_grad[k]].momentum_buffer.as_ref())
                        .collect();
                    tch::no_grad(|| ffi::fused_sgd(&p, &g, &b, &h, first))?;
                }
                Ok(())
            }
        }
    }
}

pub use volt_formats::checkpoint::OptimizerScalars;

const STATE_FIELDS: [&str; 3] = ["exp_avg", "exp_avg_sq", "momentum_buffer"];

impl ParamState {
    fn fields(&self) -> [&Option<Tensor>; 3] {
        [&self.exp_avg, &self.exp_avg_sq, &self.momentum_buffer]
    }
    fn fields_mut(&mut self) -> [&mut Option<Tensor>; 3] {
        [&mut self.exp_avg, &mut self.exp_avg_sq, &mut self.momentum_buffer]
    }
}

impl Optimizer {
    /// The state tensors, named `<param>.<field>` (e.g. `fc1.weight.exp_avg`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for ((name, _), st) in self.params.iter().zip(&self.state) {
            for (field, t) in STATE_FIELDS.iter().zip(st.fields()) {
                if let Some(t) = t {
                    out.push((format!("{name}.{field}"), t.shallow_clone()));
                }
            }
            if st.step > 0 {
                out.push((format!("{name}.step"), Tensor::from(st.step as f32)));
            }
        }
        out
    }

    /// Step count, learning rate and class.
    pub fn scalars(&self) -> OptimizerScalars {
        OptimizerScalars {
            step: self.step,
            lr: self.lr,
            class: self.spec.class_name().to_owned(),
            grad_scaler: self.scaler.as_ref().map(|s| lock(s).state()),
        }
    }

    /// Restores state saved by [`Optimizer::state_tensors`] and [`Optimizer::scalars`];
    /// returns one line per tensor that does not fit.
    pub fn load_state(
        &mut self,
        scalars: &OptimizerScalars,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if scalars.class != self.spec.class_name() {
            problems.push(format!(
                "optimizer: checkpoint has {}, this run uses {}",
                scalars.class,
                self.spec.class_name()
            ));
        }
        let mut restored = Vec::with_capacity(self.state.len());
        for (name, p) in &self.params {
            let mut st = ParamState {
                step: tensors.get(&format!("{name}.step")).map_or(0, |t| t.double_value(&[]) as u64),
                ..ParamState::default()
            };
            for (field, slot) in STATE_FIELDS.iter().zip(st.fields_mut()) {
                let key = format!("{name}.{field}");
                if let Some(t) = tensors.get(&key) {
                    if t.size() != p.size() {
                        problems.push(format!(
                            "optimizer.{key}: checkpoint shape {:?}, parameter shape {:?}",
                            t.size(),
                            p.size()
                        ));
                        continue;
                    }
                    *slot = Some(t.to_device(p.device()).to_kind(p.kind()).copy());
                }
            }
            restored.push(st);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        self.state = restored;
        self.step = scalars.step;
        self.lr = scalars.lr;
        if let (Some(s), Some(state)) = (&self.scaler, &scalars.grad_scaler) {
            lock(s).load_state(state);
        }
        Ok(())
    }
}
