"""The SenCache decision with its state update: the pure-torch reference (CPU path and test oracle).

One call per denoising step of the deciding context. With per-sample drift ``d[b] = ||x[b] - x_ref[b]||_2``
(float32 accumulation of the squares, unscaled, so a drift whose squares sum past float32's range is inf and flags
``NONFINITE``; with one element per sample torch's norm is ``|x[b] - x_ref[b]|``, which never overflows) and
``n = numel(x) / B`` elements per sample::

    score[b] = jx_ref[b] * d[b] + jt_ref[b] * |t[b] - t_ref[b]|
    ok[b]    = isfinite(score[b]) and score[b] <= eps * sqrt(n)
    skip     = all(ok) and skips < max_skips and not force
    compute  = not skip

Batch policy: the step is skipped only when every sample agrees, so every sample's reference is refreshed on a
computed step. On compute: ``t_ref <- t``, ``jx_ref <- jx_now``, ``jt_ref <- jt_now``, ``skips <- 0``; on skip:
``skips <- skips + 1``. ``flag`` gets ``COMPUTE`` (bit 0) when the step must be computed and ``NONFINITE`` (bit 1)
when any drift was NaN/Inf (such a step is always computed). ``score`` receives the per-sample scores.

The latent reference ``x_ref`` is only read: copying ``x`` into it belongs to the compute branch (``commit``, see
``sencache_kernels/commit.py``), because a one-pass kernel knows the decision only after it has read all of ``x``.
``ticket`` is the one-element int32 arrival counter of the fused kernel; it is zero before and after every call.
Every tensor stays on its device: no host synchronisation.

Three implementations share these semantics: ``decide_ref`` (pure torch; the oracle and the fallback kernel), the
C++ CPU kernel (``csrc/sencache/decide.cpp`` over ``decide.h``, bitwise equal to the reference) and ``decide_triton``
below (the CUDA kernel, registered here with or without the extension; one launch, one pass over ``x`` and ``x_ref``;
its drift norm is summed in another order, so it equals the reference's to float32 rounding, not bitwise). The public
wrapper ``decide`` and the registrations close this module; the argument rules are in ``ops.def``.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from sencache_kernels import ops
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
    ticket: torch.Tensor,
    max_skips: int,
) -> None:
    """Take the decision for one step and update the state in place (see the module docstring).

    Args:
        x: latent ``[B, ...]`` (float32/float16/bfloat16, any strides).
        t: timestep per sample, float32 ``[B]``.
        jx_now: Jx looked up at ``t``, float32 ``[B]``; becomes the reference sensitivity on a computed step.
        jt_now: Jt looked up at ``t``, float32 ``[B]``.
        eps: RMS-per-element tolerance, a one-element float32 tensor (any shape, like every one-element argument).
        force: one-element bool tensor; True computes the step whatever the score.
        x_ref: reference latent, same shape/dtype/device as ``x`` (read only).
        t_ref: float32 ``[B]`` (mutated).
        jx_ref: float32 ``[B]`` (mutated).
        jt_ref: float32 ``[B]`` (mutated).
        skips: one-element int32 consecutive-skip counter (mutated).
        flag: one-element int32 decision flag (mutated): ``COMPUTE`` and ``NONFINITE`` bits.
        score: float32 ``[B]`` output of per-sample scores (mutated).
        ticket: int32 one-element arrival counter of the fused kernel; zero before and after (unused here).
        max_skips: cap on consecutive skips (``K``).
    """
    n = x.numel() // x.shape[0]
    d = delta_norm_ref(x, x_ref)
    s = jx_ref * d + jt_ref * (t - t_ref).abs()
    # eps, force and skips hold one element of any shape (ops.def: SCALAR); read them as 0-d views, so that the
    # decision and the writes below are 0-d whatever their shapes (the writes broadcast into the caller's shapes).
    eps, force, count = eps.reshape(()), force.reshape(()), skips.reshape(())
    thr = eps.to(torch.float32) * torch.tensor(float(n), dtype=torch.float32, device=x.device).sqrt()
    ok = torch.isfinite(s) & (s <= thr)
    skip = ok.all() & (count < max_skips) & ~force
    compute = ~skip
    nonfinite = ~torch.isfinite(d).all()
    score.copy_(s)
    flag.copy_(compute.to(torch.int32) * COMPUTE + nonfinite.to(torch.int32) * NONFINITE)
    skips.copy_(torch.where(compute, torch.zeros_like(count), count + 1))
    t_ref.copy_(torch.where(compute, t, t_ref))
    jx_ref.copy_(torch.where(compute, jx_now, jx_ref))
    jt_ref.copy_(torch.where(compute, jt_now, jt_ref))


# ----------------------------------------------------------------------------------------------------------------
# The fused Triton kernel (CUDA path; runs on the CPU under TRITON_INTERPRET=1 for tests).
#
# Grid (chunks, B). Program (c, b) sums (x - x_ref)^2 (|x - x_ref| when a sample has one element, like the reference)
# over chunk c of sample b in float32 and stores the partial sum in a workspace; it then takes a ticket from the
# arrival counter (acq_rel atomic). The program that draws the last ticket adds every sample's partials in a fixed
# order (so the norm is bit-identical on every run whatever the arrival order), takes the decision, updates the state,
# writes the flag and resets the counter to zero, so that the next launch (or CUDA-graph replay) starts from a clean
# counter.
try:
    import triton
    import triton.language as tl

    _FLT_MAX = tl.constexpr(3.4028234663852886e38)  # a constexpr: compiled Triton reads no plain globals
except ImportError:  # pragma: no cover - platforms without Triton use the C++/reference ops
    triton = None

# Elements per block iteration and program counts. 4096 elements = 16 per thread at 8 warps: two 16-byte loads per
# thread and tensor in bf16. The chunk count targets up to 2048 programs per sample, enough to fill 132 SMs many times
# over at 128M elements while keeping the final reduction (B x chunks partials) small. Not yet tuned on a GPU.
_BLOCK = 4096
_MAX_CHUNKS = 2048
# Under the interpreter every program costs milliseconds, so blocks are large and programs few.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once, as Triton does when it jits the kernel
_INTERPRET_BLOCK = 1 << 16
_INTERPRET_MAX_CHUNKS = 4

if triton is not None:

    @triton.jit
    def _decide_kernel(
        x_ptr, r_ptr, stride_x, stride_r, n, chunk, n_chunks,
        t_ptr, jxn_ptr, jtn_ptr, eps_ptr, force_ptr,
        tref_ptr, jxr_ptr, jtr_ptr, skips_ptr, flag_ptr, score_ptr, ticket_ptr, part_ptr,
        sqrt_n, max_skips, B,
        BLOCK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, ONE: tl.constexpr,
    ):
        pid_c = tl.program_id(0)
        pid_b = tl.program_id(1)
        start = pid_c.to(tl.int64) * chunk
        xs = x_ptr + pid_b.to(tl.int64) * stride_x
        rs = r_ptr + pid_b.to(tl.int64) * stride_r
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for off in range(0, chunk, BLOCK):
            idx = start + off + tl.arange(0, BLOCK)
            m = idx < n
            a = tl.load(xs + idx, mask=m, other=0.0).to(tl.float32)
            r = tl.load(rs + idx, mask=m, other=0.0).to(tl.float32)
            diff = a - r
            if ONE:  # one element per sample: |diff|, as torch's norm of a single element (no overflow of diff^2)
                acc += tl.abs(diff)
            else:
                acc += diff * diff
        tl.store(part_ptr + pid_b * n_chunks + pid_c, tl.sum(acc, axis=0))
        tl.debug_barrier()  # every thread's store happens before the release below
        ticket = tl.atomic_add(ticket_ptr, 1, sem="acq_rel")
        if ticket == n_chunks * B - 1:
            # Last program: every partial is visible (acquire). Fixed-order sums, then the decision.
            bs = tl.arange(0, BLOCK_B)
            bm = bs < B
            ss = tl.zeros([BLOCK_B], dtype=tl.float32)
            for c0 in range(0, n_chunks, BLOCK_C):
                cs = c0 + tl.arange(0, BLOCK_C)
                pm = bm[:, None] & (cs < n_chunks)[None, :]
                p = tl.load(part_ptr + bs[:, None] * n_chunks + cs[None, :], mask=pm, other=0.0, volatile=True)
                ss += tl.sum(p, axis=1)
            d = ss
            if not ONE:
                d = tl.sqrt_rn(ss)
            t = tl.load(t_ptr + bs, mask=bm, other=0.0)
            t_ref = tl.load(tref_ptr + bs, mask=bm, other=0.0)
            jx_ref = tl.load(jxr_ptr + bs, mask=bm, other=0.0)
            jt_ref = tl.load(jtr_ptr + bs, mask=bm, other=0.0)
            score = jx_ref * d + jt_ref * tl.abs(t - t_ref)  # compiled with fp fusion off: rounds like torch
            thr = tl.load(eps_ptr) * sqrt_n
            ok = (tl.abs(score) <= _FLT_MAX) & (score <= thr)
            not_ok = tl.sum(tl.where(bm & ~ok, 1, 0), axis=0)
            nonfinite = tl.sum(tl.where(bm & ~(tl.abs(d) <= _FLT_MAX), 1, 0), axis=0)
            skips = tl.load(skips_ptr)
            force = tl.load(force_ptr).to(tl.int32)
            compute = (not_ok > 0) | (skips >= max_skips) | (force != 0)
            tl.store(score_ptr + bs, score, mask=bm)
            tl.store(flag_ptr, tl.where(compute, 1, 0) + tl.where(nonfinite > 0, 2, 0))
            tl.store(skips_ptr, tl.where(compute, 0, skips + 1))
            upd = bm & compute
            tl.store(tref_ptr + bs, t, mask=upd)
            tl.store(jxr_ptr + bs, tl.load(jxn_ptr + bs, mask=bm, other=0.0), mask=upd)
            tl.store(jtr_ptr + bs, tl.load(jtn_ptr + bs, mask=bm, other=0.0), mask=upd)
            tl.atomic_xchg(ticket_ptr, 0)


def _rows(v: torch.Tensor) -> torch.Tensor:
    """``v`` as ``[B, n]`` with unit inner stride: a view when the strides allow, else a contiguous copy."""
    b = v.shape[0]
    try:
        rows = v.view(b, -1)
    except RuntimeError:
        return v.reshape(b, -1).contiguous()
    return rows if rows.shape[1] <= 1 or rows.stride(1) == 1 else rows.contiguous()


def _sqrt_f32(n: int) -> float:
    """float32 ``sqrt(float32(n))`` correctly rounded, as the reference computes it (double rounding of a square root
    through float64 is exact for float32 results)."""
    return float(np.float32(math.sqrt(float(np.float32(n)))))


def decide_triton(
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
    ticket: torch.Tensor,
    max_skips: int,
    *,
    block: int | None = None,
    max_chunks: int | None = None,
) -> None:
    """``decide`` as one fused Triton launch (same arguments and semantics as ``decide_ref``; no host sync).

    Args:
        block: elements per loop iteration of a program (a power of two); default tuned per backend.
        max_chunks: upper bound on programs per sample; tests lower it to exercise multi-program reductions.
    """
    if triton is None:
        raise RuntimeError("decide_triton needs Triton (pip install triton)")
    block = block or (_INTERPRET_BLOCK if _INTERPRET else _BLOCK)
    max_chunks = max_chunks or (_INTERPRET_MAX_CHUNKS if _INTERPRET else _MAX_CHUNKS)
    b = x.shape[0]
    xr, rr = _rows(x), _rows(x_ref)
    n = xr.shape[1]
    blocks = max(1, triton.cdiv(n, block))
    per_chunk = triton.cdiv(blocks, min(blocks, max_chunks))
    chunk = per_chunk * block
    n_chunks = triton.cdiv(max(n, 1), chunk)
    part = torch.empty(b * n_chunks, dtype=torch.float32, device=x.device)
    outs = [v if v.is_contiguous() else v.contiguous() for v in (t_ref, jx_ref, jt_ref, score)]
    block_b = triton.next_power_of_2(b)
    _decide_kernel[(n_chunks, b)](
        xr, rr, xr.stride(0), rr.stride(0), n, chunk, n_chunks,
        t.contiguous(), jx_now.contiguous(), jt_now.contiguous(), eps, force,
        outs[0], outs[1], outs[2], skips, flag, outs[3], ticket, part,
        _sqrt_f32(n), max_skips, b,
        BLOCK=block, BLOCK_B=block_b, BLOCK_C=max(1, min(triton.next_power_of_2(n_chunks), 4096 // block_b)),
        ONE=n == 1, num_warps=8, enable_fp_fusion=False,
    )
    for orig, buf in zip((t_ref, jx_ref, jt_ref, score), outs, strict=True):
        if buf is not orig:
            orig.copy_(buf)


def decide(
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
    ticket: torch.Tensor,
    max_skips: int,
) -> None:
    """One SenCache decision with its in-place state update (``torch.ops.sencache.decide``); see ``decide_ref``."""
    torch.ops.sencache.decide(x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score,
                              ticket, max_skips)


def _decide_fake(*args: object) -> None:
    return None


def _decide_cuda(*args: object) -> None:
    """decide's CUDA kernel: the fused Triton launch, or the reference where Triton is missing."""
    (decide_triton if triton is not None else decide_ref)(*args)


check_decide_args = ops.CHECKS["decide"]
ops.register("decide", decide_ref, _decide_fake)
ops.register_cuda("decide", _decide_cuda)
