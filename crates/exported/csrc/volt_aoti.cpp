// volt's AOTInductor shim: torch::inductor::AOTIModelPackageLoader behind a C ABI (tch
// does not expose it). Tensors cross as `at::Tensor*` (what tch's Tensor::as_ptr points
// at; outputs are new'd, and tch's Tensor::from_ptr takes them over). Every function
// returns nullptr on success or a malloc'd error message freed with volt_aoti_free_error.
#include <ATen/core/Tensor.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/headeronly/version.h>

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace {

char *error(const std::string &message) {
  char *copy = static_cast<char *>(std::malloc(message.size() + 1));
  if (copy) std::memcpy(copy, message.c_str(), message.size() + 1);
  return copy;
}

// A compiled model's library names libtorch.so as needed (in Python, `import torch` has
// loaded it); volt links libtorch_cpu directly, so load its sibling libtorch.so once,
// globally, from the folder libtorch_cpu was loaded from.
std::string load_libtorch() {
  static std::string failure = [] {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void *>(&aoti_torch_dtype_float32), &info) || !info.dli_fname)
      return std::string("cannot find libtorch_cpu's folder");
    std::string dir(info.dli_fname);
    dir = dir.substr(0, dir.find_last_of('/') + 1);
    if (!dlopen((dir + "libtorch.so").c_str(), RTLD_NOW | RTLD_GLOBAL))
      return std::string("cannot load libtorch.so: ") + dlerror();
    return std::string();
  }();
  return failure;
}

#define STR2(x) #x
#define STR(x) STR2(x)

}  // namespace

extern "C" {

void volt_aoti_free_error(char *message) { std::free(message); }

// The libtorch this process runs, "major.minor.patch".
const char *volt_aoti_torch_version() {
  return STR(TORCH_VERSION_MAJOR) "." STR(TORCH_VERSION_MINOR) "." STR(TORCH_VERSION_PATCH);
}

// Loads `model_name` from the package at `path` with `num_runners` runners (one per
// worker thread that may call volt_aoti_run at once) on `device_index` (-1: the
// package's device as recorded, index 0). AOTInductor's own input checks are switched on
// first: the compiled model then refuses a wrong dtype or shape instead of reading past
// its buffers.
char *volt_aoti_load(const char *path, const char *model_name, int64_t num_runners,
                     int64_t device_index, void **out) {
  try {
    setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", 1);
    auto failure = load_libtorch();
    if (!failure.empty()) return error(failure);
    auto loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        path, model_name, false, static_cast<size_t>(num_runners),
        static_cast<c10::DeviceIndex>(device_index));
    *out = loader.release();
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

void volt_aoti_free(void *loader) {
  delete static_cast<torch::inductor::AOTIModelPackageLoader *>(loader);
}

// Runs the model on n inputs; on success *outputs holds *n_outputs new tensors (an array
// the caller frees with volt_aoti_free_outputs after taking each tensor).
char *volt_aoti_run(void *loader, at::Tensor **inputs, int64_t n, at::Tensor ***outputs,
                    int64_t *n_outputs) {
  try {
    std::vector<at::Tensor> in;
    in.reserve(n);
    for (int64_t i = 0; i < n; ++i) in.push_back(*inputs[i]);
    auto out = static_cast<torch::inductor::AOTIModelPackageLoader *>(loader)->run(in);
    auto **array = static_cast<at::Tensor **>(std::malloc(sizeof(at::Tensor *) * (out.size() + 1)));
    if (!array) return error("out of memory");
    for (size_t i = 0; i < out.size(); ++i) array[i] = new at::Tensor(std::move(out[i]));
    *outputs = array;
    *n_outputs = static_cast<int64_t>(out.size());
    return nullptr;
  } catch (const std::exception &e) {
    return error(e.what());
  }
}

void volt_aoti_free_outputs(at::Tensor **outputs) { std::free(outputs); }

}  // extern "C"
