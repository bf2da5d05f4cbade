"""``sencache::delta_norm``: the per-sample L2 norm of the drift ``||x - x_ref||_2``.

The pure-torch reference ``delta_norm_ref`` (the CPU path and the test oracle), the public wrapper, and the fallback
kernel and fake registered when the C++ extension is absent. The C++ CPU and Meta kernels are in
``csrc/sencache/delta_norm.cpp`` (the same ATen calls as the reference, bit for bit); the argument rules in
``ops.def``.
"""

from __future__ import annotations

import torch

from sencache_kernels import ops


def delta_norm_ref(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||x[b] - x_ref[b]||_2``, accumulated in float32.

    Args:
        x: latent of shape ``[B, ...]``, any float dtype, any strides.
        x_ref: reference latent of the same shape and dtype, on the same device.

    Returns:
        float32 tensor of shape ``[B]``.
    """
    b = x.shape[0]
    diff = x.to(torch.float32) - x_ref.to(torch.float32)
    return torch.linalg.vector_norm(diff.reshape(b, -1), ord=2, dim=1)


def delta_norm(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||x - x_ref||_2`` in float32 (``torch.ops.sencache.delta_norm``); see ``delta_norm_ref``."""
    return torch.ops.sencache.delta_norm(x, x_ref)


def _delta_norm_fake(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0],), dtype=torch.float32)


check_delta_norm_args = ops.CHECKS["delta_norm"]
ops.register("delta_norm", delta_norm_ref, _delta_norm_fake)
