"""The SenCache decision with its state update: the pure-torch reference (CPU path and test oracle).

One call per denoising step of the deciding context. With per-sample drift ``d[b] = ||x[b] - x_ref[b]||_2``
(float32 accumulation) and ``n = numel(x) / B`` elements per sample::

    score[b] = jx_ref[b] * d[b] + jt_ref[b] * |t[b] - t_ref[b]|
    ok[b]    = isfinite(score[b]) and score[b] <= eps * sqrt(n)
    skip     = all(ok) and skips < max_skips and not force
    compute  = not skip

Batch policy: the step is skipped only when every sample agrees, so every sample's reference is refreshed on a
computed step. On compute: ``x_ref <- x``, ``t_ref <- t``, ``jx_ref <- jx_now``, ``jt_ref <- jt_now``,
``skips <- 0``; on skip: ``skips <- skips + 1``. ``flag`` gets ``COMPUTE`` (bit 0) when the step must be computed
and ``NONFINITE`` (bit 1) when any drift was NaN/Inf (such a step is always computed). ``score`` receives the
per-sample scores. Every tensor stays on its device: no host synchronisation.
"""

from __future__ import annotations

import torch

from sencache_kernels.delta_norm import delta_norm_ref

COMPUTE = 1
NONFINITE = 2


def decide_ref(
    x: torch.Tensor,
    t: torch.Tensor,
    jx_now: torch.Tensor,
    jt_now: torch.Tensor,
    eps: torch.Tensor,
    force: torch.Tensor,
    x_ref: torch.Tensor,
    t_ref: torch.Tensor,
    jx_ref: torch.Tensor,
    jt_ref: torch.Tensor,
    skips: torch.Tensor,
    flag: torch.Tensor,
    score: torch.Tensor,
    max_skips: int,
) -> None:
    """Take the decision for one step and update the state in place (see the module docstring).

    Args:
        x: latent ``[B, ...]`` (float32/float16/bfloat16, any strides).
        t: timestep per sample, float32 ``[B]``.
        jx_now: Jx looked up at ``t``, float32 ``[B]``; becomes the reference sensitivity on a computed step.
        jt_now: Jt looked up at ``t``, float32 ``[B]``.
        eps: RMS-per-element tolerance, float32 0-d tensor.
        force: bool 0-d tensor; True computes the step whatever the score.
        x_ref: reference latent, same shape/dtype/device as ``x`` (mutated).
        t_ref: float32 ``[B]`` (mutated).
        jx_ref: float32 ``[B]`` (mutated).
        jt_ref: float32 ``[B]`` (mutated).
        skips: int32 0-d consecutive-skip counter (mutated).
        flag: int32 0-d decision flag (mutated): ``COMPUTE`` and ``NONFINITE`` bits.
        score: float32 ``[B]`` output of per-sample scores (mutated).
        max_skips: cap on consecutive skips (``K``).
    """
    n = x.numel() // x.shape[0]
    d = delta_norm_ref(x, x_ref)
    s = jx_ref * d + jt_ref * (t - t_ref).abs()
    thr = eps.to(torch.float32) * torch.tensor(float(n), dtype=torch.float32, device=x.device).sqrt()
    ok = torch.isfinite(s) & (s <= thr)
    skip = ok.all() & (skips < max_skips) & ~force
    compute = ~skip
    nonfinite = ~torch.isfinite(d).all()
    score.copy_(s)
    flag.copy_(compute.to(torch.int32) * COMPUTE + nonfinite.to(torch.int32) * NONFINITE)
    skips.copy_(torch.where(compute, torch.zeros_like(skips), skips + 1))
    x_ref.copy_(torch.where(compute, x, x_ref))
    t_ref.copy_(torch.where(compute, t, t_ref))
    jx_ref.copy_(torch.where(compute, jx_now, jx_ref))
    jt_ref.copy_(torch.where(compute, jt_now, jt_ref))
