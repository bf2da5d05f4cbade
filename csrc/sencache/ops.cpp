// The sencache decision-state ops: schemas (TORCH_LIBRARY), CPU and Meta implementations.
// Semantics: sencache_kernels/{delta_norm,decide,commit}.py (the references), bit for bit on CPU.
// CUDA implementations live in .cu files of their own (commit.cu, conditional.cu) with
// TORCH_LIBRARY_IMPL(sencache, CUDA, m), reusing the checks declared in ops.h. decide's CUDA kernel is the fused
// Triton kernel, registered from Python (sencache_kernels/ops.py).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <optional>

#include "sencache/decide.h"
#include "sencache/ops.h"

namespace sencache {
namespace {

// Python-facing dtype names, so messages read like the user's code.
const char* dtype_name(at::ScalarType st) {
  switch (st) {
    case at::kFloat:
      return "torch.float32";
    case at::kHalf:
      return "torch.float16";
    case at::kBFloat16:
      return "torch.bfloat16";
    case at::kDouble:
      return "torch.float64";
    case at::kInt:
      return "torch.int32";
    case at::kLong:
      return "torch.int64";
    case at::kBool:
      return "torch.bool";
    default:
      return c10::toString(st);
  }
}

bool is_latent_dtype(at::ScalarType st) {
  return st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble;
}

void check_defined(const char* op, const char* name, const at::Tensor& v) {
  TORCH_CHECK_VALUE(v.defined(), op, ": ", name, " is an undefined tensor; pass a tensor");
}

void check_same_device(const char* op, const char* name, const at::Tensor& v, const at::Tensor& x) {
  // Under tracing every argument is meta, so this holds; a meta tensor mixed with real ones is an error.
  TORCH_CHECK_VALUE(v.device() == x.device(), op, ": ", name, " is on ", v.device(), " but x is on ", x.device(),
                    "; move it with ", name, ".to(x.device)");
}

// float32 tensor of shape [B] on x's device.
void check_per_sample(const char* op, const char* name, const at::Tensor& v, const at::Tensor& x) {
  check_defined(op, name, v);
  const c10::SymInt& B = x.sym_size(0);
  TORCH_CHECK_VALUE(v.scalar_type() == at::kFloat, op, ": ", name, " must be torch.float32, got ",
                    dtype_name(v.scalar_type()), "; convert it with ", name, ".to(torch.float32)");
  TORCH_CHECK_VALUE(v.dim() == 1 && v.sym_size(0) == B, op, ": ", name, " must have shape [B] = [", B,
                    "] (one value per sample of x, x.shape[0] = ", B, "), got shape ", v.sym_sizes());
  check_same_device(op, name, v, x);
}

// One-element tensor of the given dtype on x's device.
void check_scalar(const char* op, const char* name, const at::Tensor& v, at::ScalarType dtype, const char* hint,
                  const at::Tensor& x) {
  check_defined(op, name, v);
  TORCH_CHECK_VALUE(v.scalar_type() == dtype, op, ": ", name, " must be ", dtype_name(dtype), ", got ",
                    dtype_name(v.scalar_type()), "; ", hint);
  TORCH_CHECK_VALUE(v.sym_numel() == 1, op, ": ", name, " must hold exactly one element (a 0-d tensor), got shape ",
                    v.sym_sizes(), "; ", hint);
  check_same_device(op, name, v, x);
}

void check_latents(const char* op, const at::Tensor& x, const at::Tensor& x_ref) {
  check_defined(op, "x", x);
  check_defined(op, "x_ref", x_ref);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have a batch dimension (shape [B, ...]), got a 0-d tensor; ",
                    "add one with x.unsqueeze(0)");
  TORCH_CHECK_VALUE(x.sym_size(0) >= 1, op, ": x must hold at least one sample (B >= 1), got shape ",
                    x.sym_sizes());
  TORCH_CHECK_VALUE(is_latent_dtype(x.scalar_type()), op,
                    ": x must be torch.float32, torch.float16, torch.bfloat16 or torch.float64, got ",
                    dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(x_ref.scalar_type() == x.scalar_type(), op, ": x_ref must have x's dtype ",
                    dtype_name(x.scalar_type()), ", got ", dtype_name(x_ref.scalar_type()),
                    "; allocate the reference with torch.empty_like(x)");
  TORCH_CHECK_VALUE(x_ref.sym_sizes() == x.sym_sizes(), op, ": x_ref must have x's shape ", x.sym_sizes(),
                    ", got ", x_ref.sym_sizes(), "; allocate the reference with torch.empty_like(x)");
  check_same_device(op, "x_ref", x_ref, x);
}

// The flag that set_conditional and capture_if read on the device: a one-element int32 (any device here).
void check_graph_flag(const char* op, const at::Tensor& flag) {
  check_defined(op, "flag", flag);
  TORCH_CHECK_VALUE(flag.scalar_type() == at::kInt && flag.sym_numel() == 1, op,
                    ": flag must be a one-element torch.int32 tensor (the flag written by sencache::decide), got ",
                    dtype_name(flag.scalar_type()), " of shape ", flag.sym_sizes());
}

}  // namespace

void check_delta_norm_args(const at::Tensor& x, const at::Tensor& x_ref) {
  check_latents("sencache::delta_norm", x, x_ref);
}

void check_decide_args(const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx_now, const at::Tensor& jt_now,
                       const at::Tensor& eps, const at::Tensor& force, const at::Tensor& x_ref,
                       const at::Tensor& t_ref, const at::Tensor& jx_ref, const at::Tensor& jt_ref,
                       const at::Tensor& skips, const at::Tensor& flag, const at::Tensor& score,
                       const at::Tensor& ticket, int64_t max_skips) {
  constexpr const char* op = "sencache::decide";
  check_latents(op, x, x_ref);
  check_per_sample(op, "t", t, x);
  check_per_sample(op, "jx_now", jx_now, x);
  check_per_sample(op, "jt_now", jt_now, x);
  check_per_sample(op, "t_ref", t_ref, x);
  check_per_sample(op, "jx_ref", jx_ref, x);
  check_per_sample(op, "jt_ref", jt_ref, x);
  check_per_sample(op, "score", score, x);
  check_scalar(op, "eps", eps, at::kFloat, "pass torch.tensor(eps, dtype=torch.float32, device=x.device)", x);
  check_scalar(op, "force", force, at::kBool, "pass torch.tensor(force, dtype=torch.bool, device=x.device)", x);
  check_scalar(op, "skips", skips, at::kInt, "allocate it with torch.zeros((), dtype=torch.int32, device=x.device)",
               x);
  check_scalar(op, "flag", flag, at::kInt, "allocate it with torch.zeros((), dtype=torch.int32, device=x.device)", x);
  check_scalar(op, "ticket", ticket, at::kInt,
               "allocate it once with torch.zeros((), dtype=torch.int32, device=x.device) and keep it", x);
  // The upper bound keeps the cap comparable with the int32 counter (torch would wrap a larger Python int).
  TORCH_CHECK_VALUE(max_skips >= 0 && max_skips <= std::numeric_limits<int32_t>::max(), op,
                    ": max_skips must be in [0, 2147483647] (0 disables skipping; skips is an int32 counter), got ",
                    max_skips);
}

void check_commit_args(const at::Tensor& flag, const at::Tensor& src, const std::optional<at::Tensor>& base,
                       const at::Tensor& dst) {
  constexpr const char* op = "sencache::commit";
  check_defined(op, "src", src);
  check_defined(op, "dst", dst);
  TORCH_CHECK_VALUE(is_latent_dtype(src.scalar_type()), op,
                    ": src must be torch.float32, torch.float16, torch.bfloat16 or torch.float64, got ",
                    dtype_name(src.scalar_type()));
  TORCH_CHECK_VALUE(dst.scalar_type() == src.scalar_type() && dst.sym_sizes() == src.sym_sizes(), op,
                    ": dst must have src's shape ", src.sym_sizes(), " and dtype ", dtype_name(src.scalar_type()),
                    ", got ", dst.sym_sizes(), " ", dtype_name(dst.scalar_type()),
                    "; allocate it with torch.empty_like(src)");
  check_same_device(op, "dst", dst, src);
  if (base.has_value()) {
    check_defined(op, "base", *base);
    TORCH_CHECK_VALUE(base->scalar_type() == src.scalar_type() && base->sym_sizes() == src.sym_sizes(), op,
                      ": base must have src's shape ", src.sym_sizes(), " and dtype ", dtype_name(src.scalar_type()),
                      ", got ", base->sym_sizes(), " ", dtype_name(base->scalar_type()));
    check_same_device(op, "base", *base, src);
  }
  check_scalar(op, "flag", flag, at::kInt, "pass the flag written by sencache::decide", src);
}

void check_set_conditional_args(const at::Tensor& flag, int64_t handle) {
  check_graph_flag("sencache::set_conditional", flag);
  TORCH_CHECK_VALUE(handle != 0, "sencache::set_conditional: handle is 0; pass a handle made by "
                    "cudaGraphConditionalHandleCreate");
}

void check_capture_if_args(const at::Tensor& flag, int64_t body_graph) {
  check_graph_flag("sencache::capture_if", flag);
  TORCH_CHECK_VALUE(body_graph != 0, "sencache::capture_if: body_graph is 0; pass the cudaGraph_t of a captured "
                    "body (torch.cuda.CUDAGraph(keep_graph=True).raw_cuda_graph())");
}

at::Tensor delta_norm_aten(const at::Tensor& x, const at::Tensor& x_ref) {
  // Same calls as delta_norm_ref: cast both to float32, subtract, reshape to [B, -1], 2-norm along dim 1.
  const auto diff = x.to(at::kFloat) - x_ref.to(at::kFloat);
  return at::linalg_vector_norm(diff.reshape_symint({x.sym_size(0), -1}), 2, at::IntArrayRef{1});
}

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

at::Tensor delta_norm_cpu(const at::Tensor& x, const at::Tensor& x_ref) {
  check_delta_norm_args(x, x_ref);
  return delta_norm_aten(x, x_ref);
}

at::Tensor delta_norm_meta(const at::Tensor& x, const at::Tensor& x_ref) {
  check_delta_norm_args(x, x_ref);
  return at::empty_symint({x.sym_size(0)}, x.options().dtype(at::kFloat));
}

void decide_cpu(const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx_now, const at::Tensor& jt_now,
                const at::Tensor& eps, const at::Tensor& force, const at::Tensor& x_ref, const at::Tensor& t_ref,
                const at::Tensor& jx_ref, const at::Tensor& jt_ref, const at::Tensor& skips, const at::Tensor& flag,
                const at::Tensor& score, const at::Tensor& ticket, int64_t max_skips) {
  check_decide_args(x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket,
                    max_skips);
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
  decide_step(B, d.data_ptr<float>(), t_c.data_ptr<float>(), t_ref_c.data(), jx_ref_c.data(),
                                    jt_ref_c.data(), jx_now_c.data_ptr<float>(), jt_now_c.data_ptr<float>(), eps_v,
                                    force_v, skips.data_ptr<int32_t>(), n, max_skips, score_c.data(),
                                    flag.data_ptr<int32_t>());
  t_ref_c.write_back();
  jx_ref_c.write_back();
  jt_ref_c.write_back();
  score_c.write_back();
}

void decide_meta(const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx_now, const at::Tensor& jt_now,
                 const at::Tensor& eps, const at::Tensor& force, const at::Tensor& x_ref, const at::Tensor& t_ref,
                 const at::Tensor& jx_ref, const at::Tensor& jt_ref, const at::Tensor& skips, const at::Tensor& flag,
                 const at::Tensor& score, const at::Tensor& ticket, int64_t max_skips) {
  check_decide_args(x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket,
                    max_skips);
}

void commit_cpu(const at::Tensor& flag, const at::Tensor& src, const std::optional<at::Tensor>& base,
                const at::Tensor& dst) {
  check_commit_args(flag, src, base, dst);
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
  check_commit_args(flag, src, base, dst);
}

void set_conditional_cpu(const at::Tensor& flag, int64_t handle) {
  check_set_conditional_args(flag, handle);
  TORCH_CHECK_VALUE(false, "sencache::set_conditional: flag is on the CPU; conditional handles belong to CUDA graphs, "
                    "so pass the CUDA flag of a state that lives on the GPU");
}

void set_conditional_meta(const at::Tensor& flag, int64_t handle) { check_set_conditional_args(flag, handle); }

int64_t capture_if_cpu(const at::Tensor& flag, int64_t body_graph) {
  check_capture_if_args(flag, body_graph);
  TORCH_CHECK_VALUE(false, "sencache::capture_if: flag is on the CPU; conditional nodes belong to CUDA graphs, so "
                    "call it while capturing a CUDA graph, with the CUDA flag of a state that lives on the GPU");
  return 0;
}

}  // namespace
}  // namespace sencache

// The schema strings are mirrored verbatim by the Python fallback registration (a test compares them).
TORCH_LIBRARY(sencache, m) {
  m.def("delta_norm(Tensor x, Tensor x_ref) -> Tensor");
  m.def(
      "decide(Tensor x, Tensor t, Tensor jx_now, Tensor jt_now, Tensor eps, Tensor force, Tensor x_ref, "
      "Tensor(a!) t_ref, Tensor(b!) jx_ref, Tensor(c!) jt_ref, Tensor(d!) skips, Tensor(e!) flag, "
      "Tensor(f!) score, Tensor(g!) ticket, int max_skips) -> ()");
  m.def("commit(Tensor flag, Tensor src, Tensor? base, Tensor(a!) dst) -> ()");
  m.def("set_conditional(Tensor flag, int handle) -> ()");
  m.def("capture_if(Tensor flag, int body_graph) -> int");
}

TORCH_LIBRARY_IMPL(sencache, CPU, m) {
  m.impl("delta_norm", &sencache::delta_norm_cpu);
  m.impl("decide", &sencache::decide_cpu);
  m.impl("commit", &sencache::commit_cpu);
  m.impl("set_conditional", &sencache::set_conditional_cpu);
  m.impl("capture_if", &sencache::capture_if_cpu);
}

TORCH_LIBRARY_IMPL(sencache, Meta, m) {
  m.impl("delta_norm", &sencache::delta_norm_meta);
  m.impl("decide", &sencache::decide_meta);
  m.impl("commit", &sencache::commit_meta);
  m.impl("set_conditional", &sencache::set_conditional_meta);
}
