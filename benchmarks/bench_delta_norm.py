"""Microbenchmark of ``sencache::delta_norm`` (per-sample ``||x - x_ref||_2`` in float32) against its eager reference.

``pytest benchmarks/bench_delta_norm.py --benchmark-only``. Without CUDA a CPU smoke mode (the C++ CPU op at a tiny
size; the op and the reference run the same ATen calls, so they should time alike). On a GPU the Wan latent sizes; the
op dispatches to the same ATen calls as the reference there too, so this tracks the dispatcher's overhead.
"""

import pytest
import torch

import sencache_kernels as sk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = (
    {"smoke": (2, 16, 3, 16, 16)}
    if DEVICE == "cpu"
    else {"wan480p": (1, 16, 21, 60, 104), "wan720p": (1, 16, 21, 90, 160)}  # 2.1M and 4.8M elements
)
DTYPES = [torch.float32, torch.bfloat16]
IMPLS = {"op": sk.delta_norm, "ref": sk.delta_norm_ref}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(SHAPES))
def test_delta_norm(benchmark, name, dtype, impl):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(SHAPES[name], generator=g, device=DEVICE).to(dtype)
    x_ref = torch.randn(SHAPES[name], generator=g, device=DEVICE).to(dtype)
    fn = IMPLS[impl]
    fn(x, x_ref)
    _sync()
    benchmark.extra_info.update(elements=x.numel(), device=DEVICE)
    benchmark(lambda: (fn(x, x_ref), _sync()))
