// The drift norm with the exact ATen calls of delta_norm_ref, shared by the delta_norm and decide kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace sencache {

// Per-sample ||x[b] - x_ref[b]||_2 as float32 [B], with exactly the ATen calls of delta_norm_ref (any device).
// Does not validate; call check_args("delta_norm", ...) first.
at::Tensor delta_norm_aten(const at::Tensor& x, const at::Tensor& x_ref);

}  // namespace sencache
