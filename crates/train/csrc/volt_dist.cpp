// volt's C ABI over libtorch's c10d: a TCPStore for rendezvous and a ProcessGroupGloo
// for collectives, the same engine PyTorch's DistributedDataParallel runs on.
//
// Tensors arrive as `at::Tensor*` (tch's `Tensor::as_ptr`). Functions that can fail
// return nullptr on success or a malloc'ed message freed with volt_free_error.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

char *dist_error(const std::string &message) {
  char *copy = static_cast<char *>(std::malloc(message.size() + 1));
  if (copy) std::memcpy(copy, message.c_str(), message.size() + 1);
  return copy;
}

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
  std::chrono::milliseconds timeout;
};

c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 1: return c10d::ReduceOp::MAX;
    case 2: return c10d::ReduceOp::MIN;
    default: return c10d::ReduceOp::SUM;
  }
}

template <typename F>
char *guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception &e) {
    return dist_error(e.what());
  } catch (...) {
    return dist_error("unknown C++ exception in c10d");
  }
}

}  // namespace

extern "C" {

// Joins the group: rank 0 hosts the TCPStore at addr:port unless `store_is_external`
// (torchrun's agent already hosts it). `iface` (nullable) pins Gloo to a network
// interface; otherwise Gloo binds to the address this host resolves `addr` through.
char *volt_dist_new(const char *addr, int port, int rank, int world_size, int64_t timeout_ms,
                    int store_is_external, const char *iface, void **out) {
  *out = nullptr;
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0 && !store_is_external;
    so.numWorkers = world_size;
    so.waitWorkers = !store_is_external;
    so.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(addr, so);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string host(addr);
    if (iface && *iface) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (host == "127.0.0.1" || host == "localhost") {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    options->threads = 1;
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, options);
    *out = new Group{store, gloo, timeout};
  });
}

void volt_dist_free(void *group) { delete static_cast<Group *>(group); }

// In-place all-reduce of one tensor (op: 0 sum, 1 max, 2 min).
char *volt_dist_all_reduce(void *group, at::Tensor *t, int op) {
  auto *g = static_cast<Group *>(group);
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions o;
    o.reduceOp = reduce_op(op);
    g->gloo->allreduce(ts, o)->wait(g->timeout);
  });
}

// In-place broadcast of `t` from rank `root`.
char *volt_dist_broadcast(void *group, at::Tensor *t, int root) {
  auto *g = static_cast<Group *>(group);
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    g->gloo->broadcast(ts, o)->wait(g->timeout);
  });
}

// Gathers every rank's `input` into `output`: the inputs concatenated along dim 0, in
// rank order.
char *volt_dist_all_gather(void *group, at::Tensor *output, at::Tensor *input) {
  auto *g = static_cast<Group *>(group);
  return guarded([&] { g->gloo->_allgather_base(*output, *input)->wait(g->timeout); });
}

char *volt_dist_barrier(void *group) {
  auto *g = static_cast<Group *>(group);
  return guarded([&] { g->gloo->barrier()->wait(g->timeout); });
}

// Sets `key` in the rendezvous store, waiting at most timeout_ms for the store to answer.
char *volt_dist_store_set(void *group, const char *key, const char *value, int64_t timeout_ms) {
  auto *g = static_cast<Group *>(group);
  return guarded([&] {
    g->store->setTimeout(std::chrono::milliseconds(timeout_ms));
    std::string v(value);
    g->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
  });
}

// Whether `key` is in the store (*found), waiting at most timeout_ms for an answer.
char *volt_dist_store_check(void *group, const char *key, int64_t timeout_ms, int *found) {
  auto *g = static_cast<Group *>(group);
  *found = 0;
  return guarded([&] {
    g->store->setTimeout(std::chrono::milliseconds(timeout_ms));
    *found = g->store->check({std::string(key)}) ? 1 : 0;
  });
}

}  // extern "C"
