"""Microbenchmark of one decision step: the fused op (+ its one flag read) against the eager-torch composition.

``pytest benchmarks --benchmark-only``. Until the Triton/CUDA kernels land (issue: fused decision kernel) this runs
the C++/reference CPU path; on a GPU it times with a device synchronisation per round, so the numbers are
device time plus the one read-back the eager mode needs.
"""

import pytest
import torch

import sencache_kernels as sk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# CPU smoke sizes stay small; on the GPU: Wan 480p latent (16x21x60x104 per sample).
SHAPES = {"small": (1, 16, 3, 32, 32)} if DEVICE == "cpu" else {"wan480p": (1, 16, 21, 60, 104)}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _inputs(shape, dtype):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(shape, generator=g, device=DEVICE).to(dtype)
    b = shape[0]
    j = torch.rand(b, generator=g, device=DEVICE)
    return x, torch.full((b,), 500.0, device=DEVICE), j, j * 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(SHAPES))
def test_fused_decision(benchmark, name, dtype):
    x, t, jx, jt = _inputs(SHAPES[name], dtype)
    state = sk.DecisionState(x)
    state.decide(x, t, jx, jt, 0.05, True, 3)

    def step():
        state.decide(x, t, jx, jt, 0.05, False, 3)
        return state.read_flag()

    benchmark(step)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(SHAPES))
def test_eager_composition(benchmark, name, dtype):
    """What caching libraries do today: sub, norm, scale, add, compare, then .item() (sample 0 decides)."""
    x, t, jx, jt = _inputs(SHAPES[name], dtype)
    x_ref = x.clone()

    def step():
        d = (x.float() - x_ref.float()).norm()
        score = jx[0] * d + jt[0] * (t[0] - 400.0).abs()
        return bool((score <= 0.05 * x[0].numel() ** 0.5).item())

    benchmark(step)
    _sync()
