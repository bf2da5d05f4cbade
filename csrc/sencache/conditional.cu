// CUDA implementation of sencache::set_conditional: a one-thread kernel that sets a CUDA-graph conditional handle
// from the device decision flag (1 when the flag has the COMPUTE bit, else 0). Captured into a graph before an IF
// node, it makes the node run its body (the block stack) only on computed steps, with no host involvement.
// Device-side cudaGraphSetConditional needs CUDA 12.3 or newer (conditional IF nodes: 12.4).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cstdint>

#include "sencache/decide.h"
#include "sencache/ops.h"

namespace sencache {
namespace {

#if CUDART_VERSION >= 12030
__global__ void set_conditional_kernel(const int32_t* __restrict__ flag, cudaGraphConditionalHandle handle) {
  cudaGraphSetConditional(handle, (*flag & COMPUTE) != 0 ? 1u : 0u);
}
#endif

void set_conditional_cuda(const at::Tensor& flag, int64_t handle) {
  check_set_conditional_args(flag, handle);
  TORCH_CHECK_VALUE(flag.is_cuda(), "sencache::set_conditional: flag must be a CUDA tensor, got one on ",
                    flag.device());
#if CUDART_VERSION >= 12030
  const c10::cuda::CUDAGuard guard(flag.device());
  set_conditional_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(
      flag.data_ptr<int32_t>(), static_cast<cudaGraphConditionalHandle>(handle));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  TORCH_CHECK(false, "sencache::set_conditional: this build used CUDA ", CUDART_VERSION / 1000, ".",
              (CUDART_VERSION % 1000) / 10, ", which has no device-side cudaGraphSetConditional (needs 12.3 or newer)");
#endif
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CUDA, m) { m.impl("set_conditional", &sencache::set_conditional_cuda); }
