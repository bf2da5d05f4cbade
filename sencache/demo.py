"""The demo: generate with and without SenCache, compare.

``python -m sencache.demo`` (or ``make demo``) runs the shipped reference model (a small video diffusion transformer
trained by this project, see ``sencache/reference``) on one condition: it loads the shipped sensitivity profile (or
calibrates one), generates the clip uncached and with SenCache, prints a table (steps computed, NFE saved, wall time,
PSNR and SSIM of the cached output against the uncached one) and saves a side-by-side GIF: uncached | SenCache |
|difference| (scaled to its maximum, printed). ``--model wan|cogvideox|ltx`` runs a tiny random-weight pipeline of that
architecture instead (abstract frames; the numbers show the mechanics only).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache.config import EPS_START_RATIO
from sencache.metrics import psnr, ssim

MODELS = ("reference", *tiny.ARCHITECTURES)
# Per model: steps, eps, eps_start. Reference: the SenCache point near 50% NFE of the committed quality run.
_DEFAULTS = {"reference": (50, 0.165, 0.165 * EPS_START_RATIO), "tiny": (30, 0.1, 0.01)}


def save_side_by_side_gif(path: str, *videos: torch.Tensor, fps: int = 6, scale: int = 4) -> str:
    """Write videos ``[F, 3, H, W]`` in [0, 1] next to each other as an animated GIF, upscaled ``scale`` times."""
    from PIL import Image

    frames = torch.cat([v.clamp(0, 1) for v in videos], dim=-1)  # [F, 3, H, sum W]
    frames = torch.nn.functional.interpolate(frames.float(), scale_factor=scale, mode="nearest")
    images = [Image.fromarray((f.permute(1, 2, 0) * 255).round().byte().numpy()) for f in frames]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _setup(model: str, steps: int, seed: int, calibration_samples: int, prompt: str | None):
    """(pipe, kwargs factory, profile, description) for the reference model or a tiny architecture."""
    if model == "reference":
        from sencache.reference.data import CONDITIONS
        from sencache.reference.model import CHECKPOINT_DIR, load_reference_pipeline

        pipe = load_reference_pipeline()
        prompt = prompt or "red circle left-right"

        def kwargs() -> dict[str, Any]:
            return {"prompt": prompt, "num_inference_steps": steps, "output_type": "pt",
                    "generator": torch.Generator().manual_seed(seed)}

        shipped = Path(CHECKPOINT_DIR) / "sencache_profile.safetensors"
        if shipped.is_file():
            print(f"SenCache demo: reference model, {prompt!r}, {steps} steps; profile {shipped}")
            return pipe, kwargs, sencache.SensitivityProfile.load(str(shipped))
        print(f"SenCache demo: reference model, {prompt!r}, {steps} steps; calibrating on {calibration_samples} "
              "samples (no shipped profile) ...")
        profile = sencache.calibrate(pipe, prompts=CONDITIONS[:calibration_samples], num_samples=calibration_samples,
                                     seeds=range(100, 100 + calibration_samples), num_inference_steps=steps)
        return pipe, kwargs, profile
    if prompt is not None:
        raise ValueError("--prompt applies to the reference model only; tiny pipelines take random embeddings")
    torch.manual_seed(seed)
    pipe = tiny.build_pipeline(model, seed=seed, num_layers=4)
    geometry = {"height": 64, "width": 64} if model != "cogvideox" else {"height": 32, "width": 32}

    def tiny_kwargs(**extra: Any) -> dict[str, Any]:
        return tiny.call_kwargs(model, pipe, seed=seed, num_inference_steps=steps, **geometry, **extra)

    calib = tiny_kwargs()
    for k in ("generator", "num_inference_steps", "output_type"):
        calib.pop(k)
    print(f"SenCache demo: tiny random-weight {type(pipe).__name__}, {steps} steps; calibrating on "
          f"{calibration_samples} samples ...")
    profile = sencache.calibrate(pipe, num_samples=calibration_samples, seeds=range(100, 100 + calibration_samples),
                                 num_inference_steps=steps, **calib)
    return pipe, tiny_kwargs, profile


def run_demo(model: str = "reference", steps: int | None = None, eps: float | None = None,
             eps_start: float | None = None, max_skips: int = 3, calibration_samples: int = 4,
             out_dir: str = "outputs", seed: int = 0, prompt: str | None = None) -> dict:
    """Generate with and without SenCache, print the comparison, save the GIF; return the numbers."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    d_steps, d_eps, d_eps_start = _DEFAULTS["reference" if model == "reference" else "tiny"]
    steps = steps or d_steps
    eps = d_eps if eps is None else eps
    eps_start = d_eps_start if eps_start is None else eps_start
    pipe, kwargs, profile = _setup(model, steps, seed, calibration_samples, prompt)
    pipe(**kwargs())  # warm-up
    ref, t_ref = _timed(lambda: pipe(**kwargs()).frames[0])
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile, eps=eps, eps_start=eps_start,
                                                          max_consecutive_skips=max_skips))
    try:
        out, t_out = _timed(lambda: pipe(**kwargs()).frames[0])
        stats = sencache.get_stats(pipe)
    finally:
        sencache.remove_sencache(pipe)

    quality, structure = psnr(out, ref), ssim(out, ref)
    rows = [("", "uncached", "SenCache"),
            ("steps computed", f"{steps}/{steps}", f"{stats.nfe}/{steps}"),
            ("NFE saved", "0%", f"{100 * stats.skipped / steps:.0f}%"),
            ("wall time", f"{t_ref:.2f} s", f"{t_out:.2f} s ({t_ref / t_out:.2f}x)"),
            ("PSNR vs uncached", "-", f"{quality:.2f} dB"),
            ("SSIM vs uncached", "-", f"{structure:.4f}")]
    for a, b, c in rows:
        print(f"  {a:<18}{b:>12}   {c}")
    print(f"  timeline (F forced, C computed, . skipped): {stats.timeline()}")
    diff = (out - ref).abs()
    peak = float(diff.max())
    gif = save_side_by_side_gif(os.path.join(out_dir, f"sencache_demo_{model}.gif"), ref, out,
                                diff / peak if peak > 0 else diff)
    print(f"  side-by-side GIF (uncached | SenCache | |diff| scaled to its max {peak:.3g}): {gif}")
    return {"nfe": stats.nfe, "steps": steps, "psnr": quality, "ssim": structure, "time_uncached": t_ref,
            "time_sencache": t_out, "gif": gif}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry of the demo (``python -m sencache.demo --help``)."""
    p = argparse.ArgumentParser(prog="sencache demo", description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="reference",
                   help="the trained reference model (default) or a tiny random-weight architecture")
    p.add_argument("--prompt", default=None, help="reference model condition, e.g. 'blue square rotate'")
    p.add_argument("--steps", type=int, default=None, help="default: 50 (reference), 30 (tiny)")
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--eps-start", type=float, default=None)
    p.add_argument("--max-skips", type=int, default=3)
    p.add_argument("--calibration-samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs")
    a = p.parse_args(argv)
    run_demo(a.model, a.steps, a.eps, a.eps_start, a.max_skips, a.calibration_samples, a.out, a.seed, a.prompt)


if __name__ == "__main__":
    main()
