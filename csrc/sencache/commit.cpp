// sencache::commit: CPU and Meta kernels (CUDA: commit.cu). Semantics: sencache_kernels/commit.py (commit_ref), bit
// for bit; argument rules: sencache_kernels/ops.def.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "sencache/checks.h"
#include "sencache/decide.h"

namespace sencache {
namespace {

void commit_cpu(const at::Tensor& flag, const at::Tensor& src, const std::optional<at::Tensor>& base,
                const at::Tensor& dst) {
  check_args("commit", {flag, src, base, dst});
  if ((*flag.data_ptr<int32_t>() & COMPUTE) == 0) {
    return;
  }
  if (base.has_value()) {
    at::sub_out(const_cast<at::Tensor&>(dst), src, *base);  // the reference's src - base, written in place
  } else {
    dst.copy_(src);
  }
}

void commit_meta(const at::Tensor& flag, const at::Tensor& src, const std::optional<at::Tensor>& base,
                 const at::Tensor& dst) {
  check_args("commit", {flag, src, base, dst});
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CPU, m) { m.impl("commit", &sencache::commit_cpu); }
TORCH_LIBRARY_IMPL(sencache, Meta, m) { m.impl("commit", &sencache::commit_meta); }
