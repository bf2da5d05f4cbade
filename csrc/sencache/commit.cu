// CUDA implementation of sencache::commit: the compute branch's state write, predicated on the device flag.
// When the flag has the COMPUTE bit, dst <- src - base (or dst <- src without base); otherwise the kernel returns at
// once, so a skipped step moves no data. The flag is read on the device: no host synchronisation.
// Semantics: sencache_kernels/commit.py (commit_ref), bit for bit (the difference is rounded once to the dtype).
// CPU and Meta kernels: commit.cpp; argument rules: sencache_kernels/ops.def.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "sencache/checks.h"
#include "sencache/decide.h"

namespace sencache {
namespace {

template <typename T>
__global__ void commit_kernel(const int32_t* __restrict__ flag, const T* __restrict__ src,
                              const T* __restrict__ base, T* __restrict__ dst, int64_t n) {
  if ((*flag & COMPUTE) == 0) {
    return;
  }
  using acc_t = at::opmath_type<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    dst[i] = base == nullptr ? src[i] : static_cast<T>(static_cast<acc_t>(src[i]) - static_cast<acc_t>(base[i]));
  }
}

void commit_cuda(const at::Tensor& flag, const at::Tensor& src, const std::optional<at::Tensor>& base,
                 const at::Tensor& dst) {
  check_args("commit", {flag, src, base, dst});
  const int64_t n = src.numel();
  if (n == 0) {
    return;
  }
  const bool dense = dst.is_contiguous() && src.is_contiguous() && (!base.has_value() || base->is_contiguous());
  if (!dense) {
    // Strided tensors: the reference's device-side select (one full pass, still no host sync).
    const at::Tensor updated = base.has_value() ? src - *base : src;
    const_cast<at::Tensor&>(dst).copy_(at::where(at::bitwise_and(flag, COMPUTE).ne(0), updated, dst));
    return;
  }
  const c10::cuda::CUDAGuard guard(src.device());
  constexpr int threads = 256;
  // Enough blocks to fill the GPU; the grid-stride loop covers the rest (the kernel is memory bound).
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads,
                                           int64_t{32} * at::cuda::getCurrentDeviceProperties()->multiProcessorCount);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "sencache::commit", [&] {
    commit_kernel<scalar_t><<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
        flag.data_ptr<int32_t>(), src.data_ptr<scalar_t>(),
        base.has_value() ? base->data_ptr<scalar_t>() : nullptr, dst.data_ptr<scalar_t>(), n);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CUDA, m) { m.impl("commit", &sencache::commit_cuda); }
