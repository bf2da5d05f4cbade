"""Microbenchmark of ``sencache::commit`` (``dst <- src - base`` when the device flag says compute) on computed and
skipped steps, against its reference (``torch.where`` over the whole tensor, which moves the data on both).

``pytest benchmarks/bench_commit.py --benchmark-only``. Without CUDA a CPU smoke mode (the C++ CPU op, a tiny size).
On a GPU the CUDA kernel at the Wan 480p latent size: a skipped step should cost about one launch (the kernel returns
at once), a computed one a read of src and base and a write of dst.
"""

import pytest
import torch

import sencache_kernels as sk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = (2, 16, 3, 16, 16) if DEVICE == "cpu" else (1, 16, 21, 60, 104)  # Wan 480p latent: 2.1M elements
IMPLS = {"op": sk.commit, "ref": sk.commit_ref}


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("with_base", [False, True], ids=["copy", "residual"])
@pytest.mark.parametrize("step", ["computed", "skipped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_commit(benchmark, dtype, step, with_base, impl):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    src, base, dst = (torch.randn(SHAPE, generator=g, device=DEVICE).to(dtype) for _ in range(3))
    flag = torch.tensor(sk.COMPUTE if step == "computed" else 0, dtype=torch.int32, device=DEVICE)
    base = base if with_base else None
    fn = IMPLS[impl]
    fn(flag, src, base, dst)
    _sync()
    benchmark.extra_info.update(elements=src.numel(), device=DEVICE)
    benchmark(lambda: (fn(flag, src, base, dst), _sync()))
