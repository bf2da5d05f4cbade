// sencache::set_conditional and sencache::capture_if: CPU and Meta kernels (the CUDA kernels, which build the CUDA
// graph nodes: conditional.cu). The CPU kernels check the arguments, then say why a CPU flag cannot work; the Meta
// kernels check them (capture_if's returns 0: no handle exists at trace time). Argument rules:
// sencache_kernels/ops.def.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdint>

#include "sencache/checks.h"

namespace sencache {
namespace {

void set_conditional_cpu(const at::Tensor& flag, int64_t handle) {
  check_args("set_conditional", {flag, handle});
  TORCH_CHECK_VALUE(false, "sencache::set_conditional: flag is on the CPU; conditional handles belong to CUDA graphs, "
                    "so pass the CUDA flag of a state that lives on the GPU");
}

void set_conditional_meta(const at::Tensor& flag, int64_t handle) { check_args("set_conditional", {flag, handle}); }

int64_t capture_if_cpu(const at::Tensor& flag, int64_t body_graph) {
  check_args("capture_if", {flag, body_graph});
  TORCH_CHECK_VALUE(false, "sencache::capture_if: flag is on the CPU; conditional nodes belong to CUDA graphs, so "
                    "call it while capturing a CUDA graph, with the CUDA flag of a state that lives on the GPU");
  return 0;
}

int64_t capture_if_meta(const at::Tensor& flag, int64_t body_graph) {
  check_args("capture_if", {flag, body_graph});
  return 0;
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CPU, m) {
  m.impl("set_conditional", &sencache::set_conditional_cpu);
  m.impl("capture_if", &sencache::capture_if_cpu);
}

TORCH_LIBRARY_IMPL(sencache, Meta, m) {
  m.impl("set_conditional", &sencache::set_conditional_meta);
  m.impl("capture_if", &sencache::capture_if_meta);
}
