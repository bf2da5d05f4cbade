// sencache::delta_norm: CPU and Meta kernels. Semantics: sencache_kernels/delta_norm.py (delta_norm_ref), bit for
// bit; argument rules: sencache_kernels/ops.def.
#include "sencache/delta_norm.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "sencache/checks.h"

namespace sencache {

at::Tensor delta_norm_aten(const at::Tensor& x, const at::Tensor& x_ref) {
  // Same calls as delta_norm_ref: cast both to float32, subtract, reshape to [B, -1], 2-norm along dim 1. A float32
  // latent is used as it is (.to would return it unchanged, through two dispatcher calls per step).
  const bool f32 = x.scalar_type() == at::kFloat;
  const auto diff = (f32 ? x : x.to(at::kFloat)) - (f32 ? x_ref : x_ref.to(at::kFloat));
  return at::linalg_vector_norm(diff.reshape_symint({x.sym_size(0), -1}), 2, at::IntArrayRef{1});
}

namespace {

at::Tensor delta_norm_cpu(const at::Tensor& x, const at::Tensor& x_ref) {
  check_args("delta_norm", {x, x_ref});
  return delta_norm_aten(x, x_ref);
}

at::Tensor delta_norm_meta(const at::Tensor& x, const at::Tensor& x_ref) {
  check_args("delta_norm", {x, x_ref});
  return at::empty_symint({x.sym_size(0)}, x.options().dtype(at::kFloat));
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CPU, m) { m.impl("delta_norm", &sencache::delta_norm_cpu); }
TORCH_LIBRARY_IMPL(sencache, Meta, m) { m.impl("delta_norm", &sencache::delta_norm_meta); }
