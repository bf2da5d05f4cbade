"""The demo: calibrate a small pipeline built offline, generate with and without SenCache, compare.

``python -m sencache.demo`` (or ``make demo``) prints a table (steps computed, NFE saved, wall time, PSNR of the
cached output against the uncached one) and saves a side-by-side GIF: uncached | SenCache | |difference| (scaled
to its maximum, printed).
The model has random weights (nothing is downloaded), so the frames are abstract; the numbers show the mechanics.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

import sencache
from sencache import tiny


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``a`` against ``b`` for values in [0, 1] (inf when identical)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


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


def run_demo(arch: str = "wan", steps: int = 30, eps: float = 0.1, eps_start: float = 0.01, max_skips: int = 3,
             calibration_samples: int = 4, out_dir: str = "outputs", seed: int = 0) -> dict:
    """Calibrate, generate with and without SenCache, print the comparison, save the GIF; return the numbers."""
    torch.manual_seed(seed)
    pipe = tiny.build_pipeline(arch, seed=seed, num_layers=4)
    geometry = {"height": 64, "width": 64} if arch != "cogvideox" else {"height": 32, "width": 32}

    def kwargs(**extra):
        return tiny.call_kwargs(arch, pipe, seed=seed, num_inference_steps=steps, **geometry, **extra)

    calib = kwargs()
    for k in ("generator", "num_inference_steps", "output_type"):
        calib.pop(k)
    print(f"SenCache demo: tiny random-weight {type(pipe).__name__}, {steps} steps; calibrating on "
          f"{calibration_samples} samples ...")
    profile = sencache.calibrate(pipe, num_samples=calibration_samples, seeds=range(100, 100 + calibration_samples),
                                 num_inference_steps=steps, **calib)
    pipe(**kwargs())  # warm-up
    ref, t_ref = _timed(lambda: pipe(**kwargs()).frames[0])
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile, eps=eps, eps_start=eps_start,
                                                          max_consecutive_skips=max_skips))
    out, t_out = _timed(lambda: pipe(**kwargs()).frames[0])
    stats = sencache.get_stats(pipe)
    sencache.remove_sencache(pipe)

    quality = psnr(out, ref)
    rows = [("", "uncached", "SenCache"),
            ("steps computed", f"{steps}/{steps}", f"{stats.nfe}/{steps}"),
            ("NFE saved", "0%", f"{100 * stats.skipped / steps:.0f}%"),
            ("wall time", f"{t_ref:.2f} s", f"{t_out:.2f} s ({t_ref / t_out:.2f}x)"),
            ("PSNR vs uncached", "-", f"{quality:.2f} dB")]
    for a, b, c in rows:
        print(f"  {a:<18}{b:>12}   {c}")
    print(f"  timeline (F forced, C computed, . skipped): {stats.timeline()}")
    diff = (out - ref).abs()
    peak = float(diff.max())
    gif = save_side_by_side_gif(os.path.join(out_dir, f"sencache_demo_{arch}.gif"), ref, out,
                                diff / peak if peak > 0 else diff)
    print(f"  side-by-side GIF (uncached | SenCache | |diff| scaled to its max {peak:.3g}): {gif}")
    return {"nfe": stats.nfe, "steps": steps, "psnr": quality, "time_uncached": t_ref, "time_sencache": t_out,
            "gif": gif}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry of the demo (``python -m sencache.demo --help``)."""
    p = argparse.ArgumentParser(prog="sencache demo", description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=tiny.ARCHITECTURES, default="wan")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--eps-start", type=float, default=0.01)
    p.add_argument("--max-skips", type=int, default=3)
    p.add_argument("--calibration-samples", type=int, default=4)
    p.add_argument("--out", default="outputs")
    a = p.parse_args(argv)
    run_demo(a.arch, a.steps, a.eps, a.eps_start, a.max_skips, a.calibration_samples, a.out)


if __name__ == "__main__":
    main()
