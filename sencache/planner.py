"""Tolerances for a speed target, planned on the host from a profile's calibration trajectories (no model runs).

``SenCacheConfig(profile=..., target_nfe=N)`` (or ``speedup=s``, ``N = steps / s``) asks for the tolerances whose
expected number of block-stack evaluations (NFE) in a generation is ``N``. The planner simulates the decision rule
(``Jx(t_r) ||x_m - x_r|| + Jt(t_r) |t_m - t_r| <= eps_m sqrt(numel)``, at most ``K`` skips in a row, forced steps) on
every calibration sample the profile recorded, with the profile's ``Jx, Jt`` tables as the runtime looks them up; the
runtime still decides per sample. The expected NFE is the mean over those samples. What the simulation, the
predicted error and the choice of steps read from the profile: ``sencache.trajectories``.

Schedules:

- ``"fixed"``: one ``eps`` after a start phase (``eps_start = EPS_START_RATIO * eps`` for the first
  ``start_fraction`` of the steps), ``eps`` found by bisection on the predicted NFE.
- ``"planned"``: eps(t), one tolerance per step. Dynamic programming picks the ``round(N)`` steps to compute that
  minimise the predicted error of the mean calibration trajectory (``trajectories.choose_steps``).
  A skipped step's tolerance is the score the plan skips it at; a computed step keeps the tolerance of the step
  before it when that one was skipped (the score only grows along a run of skips, so the plan's trajectory computes
  there), else 0. The table is then multiplied by the geometric middle of the factors that keep the mean trajectory
  on the plan (from 1 up to where a step the plan computes by its score would be skipped; at most ``_MARGIN**2``), a
  margin both ways: a sample that drifts more than the others scores higher and computes more. The programme plans
  the mean trajectory; where the samples drift very unlike it the fixed schedule's table can predict less error over
  them, so it is a candidate too, and the plan keeps whichever predicts the least error within half a step of the
  target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sencache.config import EPS_START_RATIO, FORECASTS
from sencache.profile import SensitivityProfile
from sencache.trajectories import (
    EARLY_WEIGHT,
    FORECAST_EARLY_WEIGHT,
    Trajectories,
    choose_steps,
    missing_tables,
    simulate,
)

__all__ = ["EARLY_WEIGHT", "FORECAST_EARLY_WEIGHT", "SCHEDULES", "Plan", "Trajectories", "choose_steps",
           "missing_tables", "plan", "simulate", "target_of"]

SCHEDULES = ("fixed", "planned")
_MARGIN = 2.0  # the planned table's margin is at most this factor each way (a sample drifting 2x the mean skips alike)
_SEARCH_ITERS = 30  # bisections over log factors [1e-9, 2] x the largest score: last steps of 2e-8 (relative)


@dataclass(frozen=True)
class Plan:
    """Tolerances planned for a speed target.

    Attributes:
        schedule: ``"fixed"`` or ``"planned"``.
        target_nfe: the block-stack evaluations per generation asked for.
        eps: the tolerance of every step (RMS per element, like ``SenCacheConfig.eps``).
        predicted_nfe: the simulated NFE, mean over the calibration samples.
        sample_nfe: the simulated NFE of each calibration sample.
        compute_fraction: per step, the fraction of the calibration samples that compute it.
        predicted_error: the predicted error (the planner's cost), mean over the calibration samples.
        cost: what a skip's predicted error weighs: ``"measured"`` (the profile's output change), ``"forecast"``
            (what the residual forecast misses of it: ``forecast="linear"``, a change table over ``2 K + 1`` steps)
            or ``"score"`` (the first-order bound: a profile without ``change_samples`` for ``K + 1`` steps).
    """

    schedule: str
    target_nfe: float
    eps: tuple[float, ...]
    predicted_nfe: float
    sample_nfe: tuple[float, ...]
    compute_fraction: tuple[float, ...]
    predicted_error: float
    cost: str = "score"

    @property
    def steps(self) -> int:
        return len(self.eps)

    def tolerance(self, step: int, num_steps: int) -> float:
        """The tolerance of ``step``; ValueError when the generation has another step count than the plan."""
        if num_steps != len(self.eps):
            raise ValueError(
                f"SenCache: the tolerances were planned for target_nfe={self.target_nfe:g} at {len(self.eps)} steps "
                f"(the profile's calibration), the pipeline runs {num_steps}; call it with num_inference_steps="
                f"{len(self.eps)}, or recalibrate the profile at {num_steps} steps, or give eps/eps_start instead"
            )
        return self.eps[step]

def _table(traj: Trajectories, mask: torch.Tensor) -> torch.Tensor:
    """Per step, the tolerance that makes the mean trajectory follow ``mask``, with a margin both ways (see the module
    docstring)."""
    score = traj.scores(traj.reach.mean(0)) / traj.root_n
    eps = torch.zeros(mask.numel(), dtype=torch.float64)
    r, run, room = 0, 0, _MARGIN**2
    for m in range(1, mask.numel()):
        if mask[m]:
            eps[m] = eps[m - 1] if not mask[m - 1] else 0.0
            if eps[m] > 0 and run < traj.max_skips and not traj.forced[m]:  # computed by its score
                room = min(room, float(score[r, m] / eps[m]))  # the factor from which the plan would skip it
            r, run = m, 0
        else:
            eps[m] = score[r, m]
            run += 1
    return eps * math.sqrt(room)


def target_of(steps: int, target_nfe: float | None, speedup: float | None) -> float:
    """The NFE asked for: ``target_nfe``, or ``steps / speedup``; ValueError for values out of range."""
    for name, v in (("target_nfe", target_nfe), ("speedup", speedup)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if (target_nfe is None) == (speedup is None):
        raise ValueError("give one of target_nfe (block-stack evaluations per generation) or speedup (steps / NFE)")
    if speedup is not None and speedup < 1:
        raise ValueError(f"speedup must be >= 1 (steps / NFE), got {speedup!r}")
    target = steps / speedup if speedup is not None else float(target_nfe)
    if not 1 <= target <= steps:
        raise ValueError(f"target_nfe must lie in [1, {steps}] (the profile's {steps} steps), got {target:g}")
    return target


def plan(profile: SensitivityProfile, target_nfe: float | None = None, *, speedup: float | None = None,
         schedule: str = "fixed", max_consecutive_skips: int = 3, force_first_steps: int | None = None,
         force_last_steps: int | None = None, start_fraction: float = 0.2, forecast: str = "reuse") -> Plan:
    """Plan the tolerances of a generation of the profile's step count for ``target_nfe`` (see the module docstring).

    Args:
        profile: a profile with its calibration trajectories (``sencache.calibrate``).
        target_nfe: expected block-stack evaluations per generation; or ``speedup``: steps / NFE.
        schedule: ``"fixed"`` (one eps after an ``eps_start`` phase) or ``"planned"`` (eps per step).
        max_consecutive_skips, force_first_steps, force_last_steps, start_fraction, forecast: as in
            ``SenCacheConfig`` (with ``"linear"`` a skip costs what the residual forecast misses).

    Raises:
        ValueError: a profile without trajectories, or a target out of reach (saying what to change).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if forecast not in FORECASTS:  # (SenCacheConfig checks it first; the planner is public on its own)
        raise ValueError(f"forecast must be one of {FORECASTS}, got {forecast!r}")
    n = len(profile)
    target = target_of(n, target_nfe, speedup)
    traj = Trajectories.from_profile(profile, max_consecutive_skips, force_first_steps, force_last_steps,
                                     start_fraction, forecast)
    fewest = _mean_nfe(simulate(traj, torch.full((n,), math.inf))[0])  # every skip the cap and forcing allow
    if target < fewest - 0.5:
        raise ValueError(
            f"target_nfe={target:g} is out of reach: the fewest block-stack evaluations are {fewest:.1f} of {n} "
            f"steps (max_consecutive_skips={max_consecutive_skips}, forced steps {int(traj.forced.sum())}); raise "
            "the target or max_consecutive_skips"
        )
    shape = torch.where(torch.arange(n) < start_fraction * n, EPS_START_RATIO, 1.0).to(torch.float64)
    scale, run = _fit(traj, shape, target)
    candidates = [(shape * scale, run)]
    if schedule == "planned":
        mask = choose_steps(traj, min(n, max(round(target), round(fewest))))
        if mask is None:  # cannot happen: computing more than the fewest steps always fits the cap and forcing
            raise RuntimeError("sencache.planner: no choice of steps fits the target; please report this profile")
        table = _table(traj, mask)
        candidates.insert(0, (table, simulate(traj, table)))
    # the least predicted error among the candidates within half a step of the target (else the closest)
    eps, (computed, error) = min(candidates, key=lambda c: (max(0.0, abs(_mean_nfe(c[1][0]) - target) - 0.5),
                                                            float(c[1][1].mean())))
    return Plan(schedule, target, tuple(eps.tolist()), _mean_nfe(computed), tuple(computed.sum(1).double().tolist()),
                tuple(computed.double().mean(0).tolist()), float(error.mean()),
                "score" if traj.change is None else "forecast" if traj.forecast else "measured")


def _mean_nfe(computed: torch.Tensor) -> float:
    return float(computed.sum(1).double().mean())


def _fit(traj: Trajectories, shape: torch.Tensor, target: float) -> tuple[float, tuple]:
    """The factor on the tolerances ``shape`` whose predicted NFE is the closest to ``target`` (ties: the larger NFE),
    taken in the middle (log scale) of the range of factors that predict that NFE, so that a sample drifting a little
    unlike the calibration samples decides the same; with ``simulate``'s result for it."""
    positive = shape[shape > 0]
    top = float(traj.scores(traj.reach).amax()) / traj.root_n / float(positive.min()) if positive.numel() else 1.0
    lo, hi = math.log(top * 1e-9), math.log(top * 2)  # every step computed .. every skip the cap allows
    runs: dict[float, tuple] = {}

    def nfe(x: float) -> float:
        if x not in runs:
            runs[x] = simulate(traj, shape * math.exp(x))
        return _mean_nfe(runs[x][0])

    def edge(a: float, b: float, below) -> tuple[float, float]:  # bisection for where below(nfe) turns True
        for _ in range(_SEARCH_ITERS):
            mid = (a + b) / 2
            a, b = (a, mid) if below(nfe(mid)) else (mid, b)
        return a, b

    a, b = edge(lo, hi, lambda v: v <= target)
    best = nfe(a) if abs(nfe(a) - target) <= abs(nfe(b) - target) else nfe(b)
    if best == nfe(a):  # the range ends at a: find where it begins
        first, last = edge(lo, a, lambda v: v <= best)[1], a
    else:
        first, last = b, edge(b, hi, lambda v: v < best)[0]
    x = (first + last) / 2
    x = x if nfe(x) == best else first  # the NFE need not fall monotonically with the factor
    return math.exp(x), runs[x]
