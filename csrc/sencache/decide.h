// The SenCache decision with its state update, on raw pointers: no torch headers, usable from host code and
// (compiled by nvcc) from CUDA device code. Semantics: sencache_kernels/decide.py (the reference), bit for bit.
//
//   score[b] = jx_ref[b] * d[b] + jt_ref[b] * |t[b] - t_ref[b]|          (float32, no FMA contraction)
//   ok[b]    = isfinite(score[b]) && score[b] <= eps * sqrtf((float)n)  (float32)
//   skip     = all(ok) && skips < max_skips && !force;   compute = !skip
//   flag     = COMPUTE * compute + NONFINITE * any(!isfinite(d))
//   compute: t_ref <- t, jx_ref <- jx_now, jt_ref <- jt_now, skips <- 0 (x_ref is copied by sencache::commit)
//   skip:    skips <- skips + 1
//
// Host builds must not contract `a * b + c` into an FMA (the reference rounds the product): the build passes
// -ffp-contract=off. Device code uses the explicitly rounded intrinsics, which nvcc never contracts.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define SENCACHE_HD __host__ __device__
#else
#define SENCACHE_HD
#endif

namespace sencache {

// Bits of the decision flag (same values as sencache_kernels/decide.py).
constexpr int32_t COMPUTE = 1;
constexpr int32_t NONFINITE = 2;

namespace detail {

SENCACHE_HD inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

SENCACHE_HD inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

SENCACHE_HD inline float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

SENCACHE_HD inline float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return sqrtf(a);
#endif
}

// Exponent-bits test: independent of -ffast-math and of <cmath> overload sets on host and device.
SENCACHE_HD inline bool is_finite(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return (u & 0x7f800000u) != 0x7f800000u;
}

}  // namespace detail

// Per-sample score jx_ref * d + jt_ref * |t - t_ref|, rounded after every operation like the reference.
SENCACHE_HD inline float decide_score(float d, float t, float t_ref, float jx_ref, float jt_ref) {
  return detail::add_rn(detail::mul_rn(jx_ref, d), detail::mul_rn(jt_ref, fabsf(detail::sub_rn(t, t_ref))));
}

// Skip threshold eps * sqrt(n) in float32, n = elements per sample.
SENCACHE_HD inline float decide_threshold(float eps, int64_t n) {
  return detail::mul_rn(eps, detail::sqrt_rn(static_cast<float>(n)));
}

// Decide one step for a batch of B samples and update the state in place.
//
// Inputs:  d[B] per-sample drift ||x - x_ref||_2 (float32), t[B], jx_now[B], jt_now[B], eps, force,
//          n (elements per sample), max_skips.
// In/out:  t_ref[B], jx_ref[B], jt_ref[B], *skips (updated), score[B], *flag (written).
// Returns: true when the step is computed (the compute branch then commits x into x_ref).
//
// All scores are read before any reference is updated, so t/t_ref (or jx_now/jx_ref) may alias.
SENCACHE_HD inline bool decide_step(int64_t B, const float* d, const float* t, float* t_ref, float* jx_ref,
                                    float* jt_ref, const float* jx_now, const float* jt_now, float eps, bool force,
                                    int32_t* skips, int64_t n, int64_t max_skips, float* score, int32_t* flag) {
  const float thr = decide_threshold(eps, n);
  bool all_ok = true;
  bool nonfinite = false;
  for (int64_t b = 0; b < B; ++b) {
    const float s = decide_score(d[b], t[b], t_ref[b], jx_ref[b], jt_ref[b]);
    score[b] = s;
    all_ok = all_ok && detail::is_finite(s) && s <= thr;
    nonfinite = nonfinite || !detail::is_finite(d[b]);
  }
  const bool skip = all_ok && static_cast<int64_t>(*skips) < max_skips && !force;
  const bool compute = !skip;
  *flag = (compute ? COMPUTE : 0) | (nonfinite ? NONFINITE : 0);
  if (compute) {
    *skips = 0;
    for (int64_t b = 0; b < B; ++b) {
      t_ref[b] = t[b];
      jx_ref[b] = jx_now[b];
      jt_ref[b] = jt_now[b];
    }
  } else {
    // Wraps like the reference's int32 `skips + 1` (cannot overflow in practice: skips < max_skips here).
    *skips = static_cast<int32_t>(static_cast<uint32_t>(*skips) + 1u);
  }
  return compute;
}

}  // namespace sencache
