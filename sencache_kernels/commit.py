"""``sencache::commit``: the compute branch's state write, predicated on the device decision flag.

``commit(flag, src, base, dst)``: when ``flag`` has the ``COMPUTE`` bit, ``dst <- src - base`` (``dst <- src`` when
``base`` is None); otherwise ``dst`` keeps its value. Two uses on a computed step: the latent reference
(``commit(flag, x, None, x_ref)``) and the block-stack residual (``commit(flag, blocks_out, blocks_in, residual)``).
The flag stays on the device, so this works under ``torch.compile`` and CUDA graphs without a host sync.

Here: the pure-torch reference ``commit_ref`` (CPU path and test oracle), the public wrapper, and the fallback kernel
and fake registered without the C++ extension. C++: ``csrc/sencache/commit.cpp`` (CPU, Meta) and ``commit.cu`` (the
CUDA kernel, which returns at once on a skipped step and moves no data); argument rules in ``ops.def``.
"""

from __future__ import annotations

import torch

from sencache_kernels import ops
from sencache_kernels.decide import COMPUTE


def commit_ref(flag: torch.Tensor, src: torch.Tensor, base: torch.Tensor | None, dst: torch.Tensor) -> None:
    """Write ``src - base`` (or ``src``) into ``dst`` if ``flag & COMPUTE``; no host synchronisation.

    Args:
        flag: one-element int32 decision flag on ``src``'s device (written by ``decide``).
        src: the new value, any float dtype.
        base: subtracted from ``src`` when given (same shape and dtype), e.g. the block-stack input.
        dst: updated in place; same shape and dtype as ``src``.
    """
    new = src if base is None else src - base
    dst.copy_(torch.where((flag.reshape(()) & COMPUTE) != 0, new, dst))


def commit(flag: torch.Tensor, src: torch.Tensor, base: torch.Tensor | None, dst: torch.Tensor) -> None:
    """``dst <- src - base`` (or ``src``) when ``flag`` says compute (``torch.ops.sencache.commit``).

    See ``commit_ref``."""
    torch.ops.sencache.commit(flag, src, base, dst)


def _commit_fake(flag: torch.Tensor, src: torch.Tensor, base: torch.Tensor | None, dst: torch.Tensor) -> None:
    return None


check_commit_args = ops.CHECKS["commit"]
ops.register("commit", commit_ref, _commit_fake)
