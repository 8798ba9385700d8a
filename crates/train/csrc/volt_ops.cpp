// volt's C++ shim: libtorch ops that tch does not expose, behind a C ABI.
//
// Tensors arrive as `at::Tensor*`, which is what tch's `Tensor::as_ptr` points at.
// Every function returns nullptr on success or a heap-allocated error message that the
// caller frees with volt_free_error.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/_fused_sgd.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/stack.h>

#include <cstring>
#include <exception>
#include <vector>

namespace {

std::vector<at::Tensor> list(at::Tensor **tensors, int64_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.push_back(*tensors[i]);
  return out;
}

char *error(const char *message) {
  char *copy = static_cast<char *>(std::malloc(std::strlen(message) + 1));
  if (copy) std::strcpy(copy, message);
  return copy;
}

}  // namespace

extern "C" {

void volt_free_error(char *message) { std::free(message); }

// Adam (decoupled == 0) or AdamW (decoupled != 0) over n parameters in one fused kernel.
// `steps` holds each parameter's step count, already incremented for this step.
char *volt_fused_adam(at::Tensor **params, at::Tensor **grads, at::Tensor **exp_avgs,
                      at::Tensor **exp_avg_sqs, at::Tensor **steps, int64_t n, double lr,
                      double beta1, double beta2, double weight_decay, double eps,
                      int decoupled) {
  try {
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n),
         s = list(steps, n);
    if (decoupled) {
      at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false);
    }
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// SGD with optional momentum over n parameters in one fused kernel; `momentum_buffers`
// has n entries when momentum != 0 and is ignored otherwise.
char *volt_fused_sgd(at::Tensor **params, at::Tensor **grads, at::Tensor **momentum_buffers,
                     int64_t n, double lr, double momentum, double dampening, int nesterov,
                     double weight_decay, int is_first_step) {
  try {
    auto p = list(params, n), g = list(grads, n);
    auto b = momentum != 0.0 ? list(momentum_buffers, n) : std::vector<at::Tensor>{};
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, dampening, nesterov != 0, false,
                    is_first_step != 0);
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// torch.nn.utils.clip_grad_norm_ over n gradients with multi-tensor kernels: the total
// L2 norm (written to *total), then every gradient times min(1, max_norm / (total + 1e-6)).
char *volt_clip_grad_norm(at::Tensor **grads, int64_t n, double max_norm, double *total) {
  try {
    auto g = list(grads, n);
    auto norms = at::_foreach_norm(g, 2);
    auto t = at::stack(norms).norm();
    auto coef = t.add(1e-6).reciprocal().mul(max_norm).clamp_max(1.0);
    at::_foreach_mul_(g, coef);
    *total = t.item<double>();
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// Turns autocast on for this thread on `device` (0 CPU, 1 CUDA) in `dtype` (0 bfloat16,
// 1 float16); what it was before goes to `was_enabled` and `was_dtype` for the exit.
char *volt_autocast_enter(int device, int dtype, int *was_enabled, int *was_dtype) {
  try {
    auto d = device == 1 ? at::kCUDA : at::kCPU;
    *was_enabled = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    *was_dtype = at::autocast::get_autocast_dtype(d) == at::kHalf ? 1 : 0;
    at::autocast::set_autocast_dtype(d, dtype == 1 ? at::kHalf : at::kBFloat16);
    at::autocast::set_autocast_enabled(d, true);
    at::autocast::increment_nesting();
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

// Undoes volt_autocast_enter; the outermost exit drops the cache of cast weights.
char *volt_autocast_exit(int device, int was_enabled, int was_dtype) {
  try {
    auto d = device == 1 ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(d, was_enabled != 0);
    at::autocast::set_autocast_dtype(d, was_dtype == 1 ? at::kHalf : at::kBFloat16);
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

}  // extern "C"
