// sencache::decide: CPU and Meta kernels. The CPU kernel is the raw-pointer decision of decide.h over the drift norm
// of delta_norm.h; semantics: sencache_kernels/decide.py (decide_ref), bit for bit. The CUDA kernel is the fused
// Triton kernel, registered from Python. Argument rules: sencache_kernels/ops.def.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "sencache/checks.h"
#include "sencache/decide.h"
#include "sencache/delta_norm.h"

namespace sencache {
namespace {

// A float32 [B] tensor viewed as a contiguous buffer; write_back() copies into the original when it was not.
struct ContiguousF32 {
  at::Tensor orig;
  at::Tensor buf;
  explicit ContiguousF32(const at::Tensor& t) : orig(t), buf(t.contiguous()) {}
  float* data() { return buf.data_ptr<float>(); }
  void write_back() {
    if (!buf.is_same(orig)) {
      orig.copy_(buf);
    }
  }
};

void decide_cpu(const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx_now, const at::Tensor& jt_now,
                const at::Tensor& eps, const at::Tensor& force, const at::Tensor& x_ref, const at::Tensor& t_ref,
                const at::Tensor& jx_ref, const at::Tensor& jt_ref, const at::Tensor& skips, const at::Tensor& flag,
                const at::Tensor& score, const at::Tensor& ticket, int64_t max_skips) {
  check_args("decide", {x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket,
                        max_skips});
  const int64_t B = x.size(0);
  const int64_t n = x.numel() / B;
  const at::Tensor d = delta_norm_aten(x, x_ref).contiguous();
  const at::Tensor t_c = t.contiguous();
  const at::Tensor jx_now_c = jx_now.contiguous();
  const at::Tensor jt_now_c = jt_now.contiguous();
  ContiguousF32 t_ref_c(t_ref), jx_ref_c(jx_ref), jt_ref_c(jt_ref), score_c(score);
  // One-element tensors: data_ptr points at their only element whatever their strides.
  const float eps_v = *eps.data_ptr<float>();
  const bool force_v = *force.data_ptr<bool>();
  decide_step(B, d.data_ptr<float>(), t_c.data_ptr<float>(), t_ref_c.data(), jx_ref_c.data(), jt_ref_c.data(),
              jx_now_c.data_ptr<float>(), jt_now_c.data_ptr<float>(), eps_v, force_v, skips.data_ptr<int32_t>(), n,
              max_skips, score_c.data(), flag.data_ptr<int32_t>());
  t_ref_c.write_back();
  jx_ref_c.write_back();
  jt_ref_c.write_back();
  score_c.write_back();
}

void decide_meta(const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx_now, const at::Tensor& jt_now,
                 const at::Tensor& eps, const at::Tensor& force, const at::Tensor& x_ref, const at::Tensor& t_ref,
                 const at::Tensor& jx_ref, const at::Tensor& jt_ref, const at::Tensor& skips, const at::Tensor& flag,
                 const at::Tensor& score, const at::Tensor& ticket, int64_t max_skips) {
  check_args("decide", {x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket,
                        max_skips});
}

}  // namespace
}  // namespace sencache

TORCH_LIBRARY_IMPL(sencache, CPU, m) { m.impl("decide", &sencache::decide_cpu); }
TORCH_LIBRARY_IMPL(sencache, Meta, m) { m.impl("decide", &sencache::decide_meta); }
