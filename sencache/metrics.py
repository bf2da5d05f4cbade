"""Quality of a video against a reference video (values in [0, 1]): PSNR, SSIM and relative L2, in float64.

Used by the demo and the quality benchmark (:mod:`sencache.quality`); the reference is always the uncached output of
the same model, seed and inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["psnr", "rel_l2", "ssim"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``a`` against ``b`` for values in [0, 1] (inf when identical)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float(torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double()))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11 / 1.5, K1 = 0.01, K2 = 0.03, data range 1) of videos
    ``[F, C, H, W]`` in [0, 1], over frames, channels and valid window positions."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two [F, C, H, W] videos of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    window = min(window, a.shape[-1], a.shape[-2])
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()
    a, b = a.double(), b.double()

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
