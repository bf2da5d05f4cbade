"""Per-sample L2 norm of the drift ``||x - x_ref||_2``: the pure-torch reference (CPU path and test oracle)."""

from __future__ import annotations

import torch


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
