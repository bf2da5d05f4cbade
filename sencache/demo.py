"""The demo: generate with and without SenCache, compare.

``python -m sencache.demo`` (or ``make demo``) runs the shipped reference model (a small video diffusion transformer
trained by this project, see ``sencache/reference``) on one condition: it loads the shipped sensitivity profile (or
calibrates one), generates the clip uncached and with SenCache, prints a table (steps computed, NFE saved, wall time,
PSNR and SSIM of the cached output against the uncached one) and saves a side-by-side GIF: uncached | SenCache |
|difference| (scaled to its maximum, printed). ``--model wan|cogvideox|ltx|flux|...`` runs a tiny random-weight
pipeline of that family instead (abstract frames, one for an image model; the numbers show the mechanics only).

Wall times are medians of ``--repeats`` runs of each (uncached and SenCache alternate, after a short warm-up of
each), with their range. On a CPU they time a small model on a shared machine: a rough ratio, not a speed claim
(the GPU measurements are in the README).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache.config import EPS_START_RATIO
from sencache.metrics import psnr, ssim
from sencache.planner import SCHEDULES, missing_tables

MODELS = ("reference", *tiny.ALL_ARCHITECTURES)
# Per model: steps, eps, eps_start. Reference: the SenCache point near 50% NFE of the committed quality run.
_DEFAULTS = {"reference": (50, 0.165, 0.165 * EPS_START_RATIO), "tiny": (30, 0.1, 0.01)}
# What `--help` says the demo takes (measured: see RUNTIME_HELP and the closing note of issue 16).
RUNTIME = {"reference": "1.5 minutes", "short": "30 s"}


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


def check_arguments(model: str, steps: int | None, eps: float | None, eps_start: float | None, max_skips: int,
                    calibration_samples: int, out_dir: str, prompt: str | None, repeats: int,
                    target_nfe: float | None = None, schedule: str = "fixed") -> None:
    """Raise ``ValueError`` (saying what to change) for arguments the demo cannot run with, before any work; creates
    ``out_dir`` and checks that a file can be written there."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if target_nfe is not None:
        n = steps if steps is not None else _DEFAULTS["reference" if model == "reference" else "tiny"][0]
        if eps is not None or eps_start is not None:
            raise ValueError("target_nfe plans the tolerances: give it without eps / eps_start")
        if isinstance(target_nfe, bool) or not isinstance(target_nfe, (int, float)) or not 1 <= target_nfe <= n:
            raise ValueError(f"target_nfe must be a number in [1, {n}] (the steps), got {target_nfe!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "planned" and target_nfe is None:
        raise ValueError("the planned schedule plans the tolerances for a target: give target_nfe with it")

    def whole(name: str, value: Any, least: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")

    if steps is not None:
        whole("steps", steps, 1)
    whole("max_skips", max_skips, 0)
    whole("calibration_samples", calibration_samples, 1)
    whole("repeats", repeats, 1)
    for name, value in (("eps", eps), ("eps_start", eps_start)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if prompt is not None:
        if model != "reference":
            raise ValueError("--prompt applies to the reference model only; tiny pipelines take random embeddings")
        from sencache.reference.data import CONDITIONS, parse_condition

        if not prompt.strip():
            raise ValueError(f"the prompt is empty; name a colour, a shape and a motion, e.g. {CONDITIONS[0]!r}")
        parse_condition(prompt)  # a ValueError naming the vocabulary
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write the GIF to --out {out_dir!r} ({exc.strerror or exc}); choose a writable "
                         "directory") from exc


def _setup(model: str, steps: int, seed: int, calibration_samples: int, prompt: str | None, plan: bool = False):
    """(pipe, kwargs factory, profile) for the reference model or a tiny architecture; ``plan``: the profile must have
    the calibration trajectories of a generation of ``steps`` (a target is planned on them)."""
    if model == "reference":
        from sencache.reference.data import CONDITIONS
        from sencache.reference.model import CHECKPOINT_DIR, load_reference_pipeline

        pipe = load_reference_pipeline()
        prompt = prompt or "red circle left-right"

        def kwargs() -> dict[str, Any]:
            return {"prompt": prompt, "num_inference_steps": steps, "output_type": "pt",
                    "generator": torch.Generator().manual_seed(seed)}

        shipped = Path(CHECKPOINT_DIR) / "sencache_profile.safetensors"
        why = "no shipped profile"
        if shipped.is_file():
            profile = sencache.SensitivityProfile.load(str(shipped))
            lacks = missing_tables(profile) + ([f"a calibration at {steps} steps"] if len(profile) != steps else [])
            if not plan or not lacks:
                print(f"SenCache demo: reference model, {prompt!r}, {steps} steps; profile {shipped}")
                return pipe, kwargs, profile
            why = f"to plan the target, the shipped profile lacks {', '.join(lacks)}"
        print(f"SenCache demo: reference model, {prompt!r}, {steps} steps; calibrating on {calibration_samples} "
              f"samples ({why}) ...")
        profile = sencache.calibrate(pipe, prompts=CONDITIONS[:calibration_samples], num_samples=calibration_samples,
                                     seeds=range(100, 100 + calibration_samples), num_inference_steps=steps)
        return pipe, kwargs, profile
    torch.manual_seed(seed)
    first_three = model in tiny.ARCHITECTURES  # the others keep their own tiny sizes
    pipe = tiny.build_pipeline(model, seed=seed, **({"num_layers": 4} if first_three else {}))
    geometry = {} if not first_three else {"height": 64, "width": 64} if model != "cogvideox" else {
        "height": 32, "width": 32}

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


def _spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} s ({min(times):.2f}-{max(times):.2f})" if len(times) > 1 \
        else f"{times[0]:.2f} s"


def run_demo(model: str = "reference", steps: int | None = None, eps: float | None = None,
             eps_start: float | None = None, max_skips: int = 3, calibration_samples: int = 4,
             out_dir: str = "outputs", seed: int = 0, prompt: str | None = None, repeats: int = 3,
             target_nfe: float | None = None, schedule: str = "fixed") -> dict:
    """Generate with and without SenCache, print the comparison, save the GIF; return the numbers.

    The wall times are medians over ``repeats`` runs of each (alternating, after a 2-step warm-up of each). With
    ``target_nfe`` the tolerances are planned for it (``schedule``: ``"fixed"`` or ``"planned"``)."""
    check_arguments(model, steps, eps, eps_start, max_skips, calibration_samples, out_dir, prompt, repeats,
                    target_nfe, schedule)
    d_steps, d_eps, d_eps_start = _DEFAULTS["reference" if model == "reference" else "tiny"]
    steps = d_steps if steps is None else steps
    pipe, kwargs, profile = _setup(model, steps, seed, calibration_samples, prompt, plan=target_nfe is not None)
    if target_nfe is not None:
        config = sencache.SenCacheConfig(profile=profile, target_nfe=target_nfe, schedule=schedule,
                                         max_consecutive_skips=max_skips)
        print(f"  {schedule} tolerances for {target_nfe:g} NFE: predicted NFE {config.plan.predicted_nfe:.2f} "
              f"(calibration samples {min(config.plan.sample_nfe):g}-{max(config.plan.sample_nfe):g})")
    else:
        config = sencache.SenCacheConfig(profile=profile, eps=d_eps if eps is None else eps,
                                         eps_start=d_eps_start if eps_start is None else eps_start,
                                         max_consecutive_skips=max_skips)

    def video(result: Any) -> torch.Tensor:  # [F, 3, H, W]; an image is a video of one frame
        out = result.frames[0] if model == "reference" else tiny.output_of(model, result)[0]
        return out if out.dim() == 4 else out.unsqueeze(0)

    def uncached():
        return video(pipe(**kwargs()))

    def cached():  # the pipeline call is timed, not applying and removing SenCache
        sencache.apply_sencache(pipe, config)
        try:
            frames, seconds = _timed(lambda: video(pipe(**kwargs())))
            return frames, sencache.get_stats(pipe), seconds
        finally:
            sencache.remove_sencache(pipe)

    warm = {**kwargs(), "num_inference_steps": min(2, steps)}
    pipe(**warm)
    # (a plan is for the full step count: the 2-step warm-up runs the default tolerances)
    sencache.apply_sencache(pipe, config if config.plan is None else sencache.SenCacheConfig(profile=profile))
    try:
        pipe(**warm)
    finally:
        sencache.remove_sencache(pipe)
    times_ref, times_out = [], []
    for r in range(repeats):  # alternate which goes first, so that a drifting machine favours neither
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            if which == 0:
                ref, t = _timed(uncached)
                times_ref.append(t)
            else:
                out, stats, t = cached()
                times_out.append(t)
    t_ref, t_out = statistics.median(times_ref), statistics.median(times_out)

    quality, structure = psnr(out, ref), ssim(out, ref)
    label = "wall time" if repeats == 1 else f"wall, median of {repeats}"
    rows = [("", "uncached", "SenCache"),
            ("steps computed", f"{steps}/{steps}", f"{stats.nfe}/{steps}"),
            ("NFE saved", "0%", f"{100 * stats.skipped / steps:.0f}%"),
            (label, _spread(times_ref), f"{_spread(times_out)}, {t_ref / t_out:.2f}x"),
            ("PSNR vs uncached", "-", f"{quality:.2f} dB"),
            ("SSIM vs uncached", "-", f"{structure:.4f}")]
    for a, b, c in rows:
        print(f"  {a:<20}{b:>22}   {c}")
    print(f"  timeline (F forced, C computed, . skipped): {stats.timeline()}")
    device = next(pipe.transformer.parameters()).device
    if device.type == "cpu":
        print(f"  timing: a small model on the CPU ({torch.get_num_threads()} threads), median of {repeats} "
              "run(s); a rough ratio, not a speed claim (GPU measurements: README)")
    worst = max((max(ts) - min(ts)) / statistics.median(ts) for ts in (times_ref, times_out))
    if repeats > 1 and worst > 0.2:
        print(f"  the runs varied by up to {100 * worst:.0f}% of their median: the machine is busy and the ratio "
              "is unreliable")
    diff = (out - ref).abs()
    peak = float(diff.max())
    gif = save_side_by_side_gif(os.path.join(out_dir, f"sencache_demo_{model}.gif"), ref, out,
                                diff / peak if peak > 0 else diff)
    print(f"  side-by-side GIF (uncached | SenCache | |diff| scaled to its max {peak:.3g}): {gif}")
    return {"nfe": stats.nfe, "steps": steps, "psnr": quality, "ssim": structure, "time_uncached": t_ref,
            "time_sencache": t_out, "times_uncached": times_ref, "times_sencache": times_out, "gif": gif}


RUNTIME_HELP = """\
runtime: 2 warm-up steps, then --repeats runs each of uncached and SenCache. The reference model at its
default 50 steps takes about {ref} on an idle 2-core CPU (a busy one: several times as long; a GPU:
seconds); --steps 10 about {short}. A tiny --model adds a short calibration."""


def _whole(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    """Command-line entry of the demo (``python -m sencache.demo --help``)."""
    p = argparse.ArgumentParser(prog="sencache demo", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                epilog=RUNTIME_HELP.format(ref=RUNTIME["reference"], short=RUNTIME["short"]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODELS, default="reference",
                   help="the trained reference model (default) or a tiny random-weight architecture")
    p.add_argument("--prompt", default=None, help="reference model condition, e.g. 'blue square rotate'")
    p.add_argument("--steps", type=_whole(1), default=None, help="denoising steps (default: 50 reference, 30 tiny)")
    p.add_argument("--eps", type=_tolerance, default=None)
    p.add_argument("--eps-start", type=_tolerance, default=None)
    p.add_argument("--target-nfe", type=_tolerance, default=None,
                   help="plan the tolerances for this many block-stack evaluations (instead of --eps/--eps-start)")
    p.add_argument("--schedule", choices=SCHEDULES, default="fixed",
                   help="with --target-nfe: one eps after a start phase (fixed) or one per step (planned)")
    p.add_argument("--max-skips", type=_whole(0), default=3)
    p.add_argument("--calibration-samples", type=_whole(1), default=4)
    p.add_argument("--repeats", type=_whole(1), default=3,
                   help="timed runs of each, uncached and SenCache; the table shows their median and range (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="outputs", help="directory of the side-by-side GIF (created; must be writable)")
    a = p.parse_args(argv)
    try:
        check_arguments(a.model, a.steps, a.eps, a.eps_start, a.max_skips, a.calibration_samples, a.out, a.prompt,
                        a.repeats, a.target_nfe, a.schedule)
    except ValueError as exc:
        p.error(str(exc))
    run_demo(a.model, a.steps, a.eps, a.eps_start, a.max_skips, a.calibration_samples, a.out, a.seed, a.prompt,
             a.repeats, a.target_nfe, a.schedule)


if __name__ == "__main__":
    main()
