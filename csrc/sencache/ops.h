// Shared pieces of the sencache op bindings (argument checks, the ATen drift norm), declared here so that each
// backend's TORCH_LIBRARY_IMPL (ops.cpp: CPU and Meta; commit.cu and conditional.cu: CUDA) uses the same validation.
// The raw-pointer decision itself lives in decide.h (no torch headers).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace sencache {

// Validate delta_norm's arguments; throws c10::ValueError (Python: ValueError) saying what to fix.
void check_delta_norm_args(const at::Tensor& x, const at::Tensor& x_ref);

// Validate decide's arguments (dtypes, shapes, devices; the device checks are skipped for meta tensors);
// throws c10::ValueError (Python: ValueError) saying what to fix.
void check_decide_args(const at::Tensor& x, const at::Tensor& t, const at::Tensor& jx_now, const at::Tensor& jt_now,
                       const at::Tensor& eps, const at::Tensor& force, const at::Tensor& x_ref,
                       const at::Tensor& t_ref, const at::Tensor& jx_ref, const at::Tensor& jt_ref,
                       const at::Tensor& skips, const at::Tensor& flag, const at::Tensor& score,
                       const at::Tensor& ticket, int64_t max_skips);

// Validate commit's arguments (dst and base like src; flag a one-element int32 on src's device).
void check_commit_args(const at::Tensor& flag, const at::Tensor& src, const std::optional<at::Tensor>& base,
                       const at::Tensor& dst);

// Validate set_conditional's arguments (flag a one-element int32; a non-zero handle).
void check_set_conditional_args(const at::Tensor& flag, int64_t handle);

// Validate capture_if's arguments (flag a one-element int32; a non-null body graph).
void check_capture_if_args(const at::Tensor& flag, int64_t body_graph);

// Per-sample ||x[b] - x_ref[b]||_2 as float32 [B], with exactly the ATen calls of delta_norm_ref (any device).
// Does not validate; call check_delta_norm_args first.
at::Tensor delta_norm_aten(const at::Tensor& x, const at::Tensor& x_ref);

}  // namespace sencache
