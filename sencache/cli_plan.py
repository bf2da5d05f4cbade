"""``sencache plan PROFILE --target-nfe N``: the tolerances SenCache would use for a speed target, and the NFE the
planner predicts for them (``sencache.planner``; no model runs)."""

from __future__ import annotations

import argparse

from sencache.config import FORECASTS
from sencache.planner import SCHEDULES, Plan


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def parser(prog: str = "sencache plan") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Plan SenCache's tolerances for a speed target from a profile's "
                                "calibration trajectories and print them with the predicted NFE (no model runs).")
    p.add_argument("profile", help="a profile written by `sencache calibrate` or SensitivityProfile.save")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-nfe", type=float, help="block-stack evaluations per generation")
    target.add_argument("--speedup", type=float, help="steps / NFE")
    p.add_argument("--steps", type=_count, default=None,
                   help="denoising steps of the generation (default and only value: the profile's calibration)")
    p.add_argument("--schedule", choices=SCHEDULES, default="fixed",
                   help="fixed: one eps after an eps_start phase; planned: a tolerance per step (default fixed)")
    p.add_argument("--max-skips", type=_count, default=3, help="max_consecutive_skips (K), default 3")
    p.add_argument("--force-first", type=_count, default=None, help="force_first_steps (default: the model's)")
    p.add_argument("--force-last", type=_count, default=None, help="force_last_steps (default: the model's)")
    p.add_argument("--start-fraction", type=_fraction, default=0.2, help="start phase of the fixed schedule")
    p.add_argument("--forecast", choices=FORECASTS, default="reuse",
                   help="what a skipped step adds (SenCacheConfig.forecast); linear: a skip costs the forecast's miss")
    return p


def describe(plan: Plan, timesteps: list[float]) -> str:
    """The plan as a table (step, timestep, tolerance, share of the calibration samples computing it) and a summary."""
    lines = [f"{'step':>4} {'timestep':>10} {'eps':>10} {'computed':>9}"]
    for i, (t, eps, share) in enumerate(zip(timesteps, plan.eps, plan.compute_fraction, strict=True)):
        lines.append(f"{i:>4} {t:>10.3f} {eps:>10.5g} {share:>9.0%}")
    if plan.schedule == "fixed":
        first, last = plan.eps[0], plan.eps[-1]
        lines.append(f"tolerances: eps_start {first:.5g} in the start phase, eps {last:.5g} after")
    lo, hi = min(plan.sample_nfe), max(plan.sample_nfe)
    cost = {"measured": "measured output change", "forecast": "what the forecast misses of the measured output change",
            "score": "first-order score: no output change recorded"}[plan.cost]
    lines.append(f"{plan.schedule} schedule, target {plan.target_nfe:g} NFE of {plan.steps} steps: predicted NFE "
                 f"{plan.predicted_nfe:.2f} (calibration samples {lo:g}-{hi:g}), predicted error "
                 f"{plan.predicted_error:.4g} ({cost})")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    p = parser()
    a = p.parse_args(argv)
    from sencache.planner import plan
    from sencache.profile import SensitivityProfile

    try:
        profile = SensitivityProfile.load(a.profile)
        if a.steps is not None and a.steps != len(profile):
            raise ValueError(f"the profile was calibrated at {len(profile)} steps, and a plan is for the steps of its "
                             f"calibration trajectories; for {a.steps} steps calibrate at {a.steps} (sencache "
                             f"calibrate ... --steps {a.steps})")
        result = plan(profile, a.target_nfe, speedup=a.speedup, schedule=a.schedule, max_consecutive_skips=a.max_skips,
                      force_first_steps=a.force_first, force_last_steps=a.force_last, start_fraction=a.start_fraction,
                      forecast=a.forecast)
    except (OSError, ValueError) as exc:
        p.exit(2, f"sencache plan: {' '.join(str(exc).split())}\n")
    print(describe(result, profile.timesteps.tolist()))
    given = {"target_nfe": a.target_nfe, "speedup": a.speedup, "schedule": a.schedule, "max_consecutive_skips":
             a.max_skips, "force_first_steps": a.force_first, "force_last_steps": a.force_last,
             "start_fraction": a.start_fraction, "forecast": a.forecast}
    defaults = {"schedule": "fixed", "max_consecutive_skips": 3, "start_fraction": 0.2, "forecast": "reuse"}
    shown = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None and v != defaults.get(k))
    print(f"use: sencache.SenCacheConfig(profile=sencache.SensitivityProfile.load({a.profile!r}), {shown})")
