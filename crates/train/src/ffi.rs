//! Safe wrappers over volt's C++ shim (`csrc/volt_ops.cpp`).
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn volt_free_error(message: *mut c_char);
    fn volt_autocast_enter(
        device: c_int,
        dtype: c_int,
        was_enabled: *mut c_int,
        was_dtype: *mut c_int,
    ) -> *mut c_char;
    fn volt_autocast_exit(device: c_int, was_enabled: c_int, was_dtype: c_int) -> *mut c_char;
    fn volt_fused_adam(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        exp_avgs: *const *const C_tensor,
        exp_avg_sqs: *const *const C_tensor,
        steps: *const *const C_tensor,
        n: i64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: c_int,
    ) -> *mut c_char;
    fn volt_fused_sgd(
        params: *const *const C_tensor,
        grads: *const *const C_tensor,
        momentum_buffers: *const *const C_tensor,
        n: i64,
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: c_int,
        weight_decay: f64,
        is_first_step: c_int,
    ) -> *mut c_char;
    fn volt_clip_grad_norm(
        grads: *const *const C_tensor,
        n: i64,
        max_norm: f64,
        total: *mut f64,
    ) -> *mut c_char;
}

pub(crate) fn check(message: *mut c_char) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'ed by the shim, freed once here.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned();
    unsafe { volt_free_error(message) };
    Err(Error::Torch(tch::TchError::Torch(text)))
}

fn ptrs(tensors: &[&Tensor]) -> Vec<*const C_tensor> {
    tensors.iter().map(|t| t.as_ptr()).collect()
}

/// Hyperparameters of one fused Adam/AdamW step.
pub(crate) struct AdamStep {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    pub decoupled: bool,
}

/// libtorch's `_fused_adam_` / `_fused_adamw_` over every parameter at once.
pub(crate) fn fused_adam(
    params: &[&Tensor],
    grads: &[&Tensor],
    exp_avgs: &[&Tensor],
    exp_avg_sqs: &[&Tensor],
    steps: &[&Tensor],
    h: &AdamStep,
) -> Result<()> {
    let n = params.len();
    assert!(grads.len() == n && exp_avgs.len() == n && exp_avg_sqs.len() == n && steps.len() == n);
    let (p, g, m, v, s) = (ptrs(params), ptrs(grads), ptrs(exp_avgs), ptrs(exp_avg_sqs), ptrs(steps));
    // SAFETY: five arrays of n live tensor pointers; the shim only reads the arrays.
    check(unsafe {
        volt_fused_adam(
            p.as_ptr(),
            g.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            s.as_ptr(),
            n as i64,
            h.lr,
            h.betas.0,
            h.betas.1,
            h.weight_decay,
            h.eps,
            c_int::from(h.decoupled),
        )
    })
}

/// Hyperparameters of one fused SGD step.
pub(crate) struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

/// libtorch's `_fused_sgd_`; `buffers` is empty without momentum.
pub(crate) fn fused_sgd(
    params: &[&Tensor],
    grads: &[&Tensor],
    buffers: &[&Tensor],
    h: &SgdStep,
    is_first_step: bool,
) -> Result<()> {
    let n = params.len();
    assert!(grads.len() == n && (buffers.is_empty() || buffers.len() == n));
    let (p, g, b) = (ptrs(params), ptrs(grads), ptrs(buffers));
    // SAFETY: arrays of n live tensor pointers (b may be empty when momentum is 0).
    check(unsafe {
        volt_fused_sgd(
            p.as_ptr(),
            g.as_ptr(),
            if b.is_empty() { std::ptr::null() } else { b.as_ptr() },
            n as i64,
            h.lr,
            h.momentum,
            h.dampening,
            c_int::from(h.nesterov),
            h.weight_decay,
            c_int::from(is_first_step),
        )
    })
}

/// Scales `grads` so that their global L2 norm is at most `max_norm` (libtorch's
/// multi-tensor kernels, as `clip_grad_norm_`); returns the norm before clipping.
pub(crate) fn clip_grad_norm(grads: &[&Tensor], max_norm: f64) -> Result<f64> {
    let g = ptrs(grads);
    let mut total = 0.0;
    // SAFETY: an array of live tensor pointers; `total` outlives the call.
    check(unsafe { volt_clip_grad_norm(g.as_ptr(), g.len() as i64, max_norm, &mut total) })?;
    Ok(total)
}

/// libtorch's autocast on for this thread while alive (`torch.autocast` as a guard).
pub(crate) struct Autocast {
    device: c_int,
    was_enabled: c_int,
    was_dtype: c_int,
}

impl Autocast {
    /// Autocast on `cuda` (else the CPU) to float16 (`half`) or bfloat16.
    pub(crate) fn enter(cuda: bool, half: bool) -> Result<Self> {
        let (device, dtype) = (c_int::from(cuda), c_int::from(half));
        let (mut was_enabled, mut was_dtype) = (0, 0);
        // SAFETY: the shim writes the two out-parameters, which outlive the call.
        check(unsafe { volt_autocast_enter(device, dtype, &mut was_enabled, &mut was_dtype) })?;
        Ok(Autocast { device, was_enabled, was_dtype })
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: plain values; restoring libtorch's thread-local flags cannot fail in
        // practice, and a failure here has nobody to report to.
        let message = unsafe { volt_autocast_exit(self.device, self.was_enabled, self.was_dtype) };
        let _ = check(message);
    }
}
