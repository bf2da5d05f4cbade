"""What the planner (``sencache.planner``) predicts from a profile's calibration trajectories: the decision rule
simulated on every calibration sample, the error a schedule's skips add, and the steps that minimise it.

The profile holds the drift of single steps, ``||x_{k+1} - x_k||``, per sample. For the distance from a reference
step ``r`` to a later step ``m`` the simulator takes their sum, ``sum_{k=r}^{m-1} ||x_{k+1} - x_k||``: exact for a
trajectory that runs straight over the skipped steps (flow matching whose velocity stays put), an upper bound
otherwise (triangle inequality), so a prediction errs towards computing more. The trajectories are the uncached ones;
a cached run drifts a little differently.

A schedule's predicted error sums, over the steps it skips, ``w_m c_m``: the change of the output the skip misses
times a weight. ``c_m`` is measured along the calibration runs (``change_samples``: ``||f(x_m, t_m) - f(x_r, t_r)||``
from the last computed step ``r``); with ``forecast="linear"`` it is what the first-order forecast from the last two
computed steps misses of it, which the table's distances between the three steps' outputs fix
(``Trajectories.skip_cost``; a window of ``2 K + 1`` steps, else the reuse change); for profiles without the table
(or with a window shorter than ``K + 1``) it is the first-order bound, the decision's score. The weight: the output
error moves the next latent by ``ds_m`` times it (``ds_m = gap_m / t_0``, the step's gap on the scale where the first
timestep is 1, the last step running to t = 0), each later step ``k`` can grow that error at most ``1 + ds_k Jx(t_k)``
times (``x_{k+1} = x_k + ds_k f``, to first order), and in the first ``start_fraction`` of the steps it weighs more, a
prior: later steps amplify early errors more than the first-order bound says. That factor is ``EARLY_WEIGHT`` (4) with
the measured change, ``FORECAST_EARLY_WEIGHT`` (2) with the forecast's miss, each chosen on 6 development pairs
(neither held-out nor calibration; ``benchmarks/results/planner_dev_cpu/``), and ``1 / EPS_START_RATIO`` (14, the
fixed schedule's tighter start) with the bound, which overrates the middle steps' change about 4x against the early and
late ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sencache.config import EPS_START_RATIO
from sencache.profile import SensitivityProfile

EARLY_WEIGHT = 4.0  # the early steps' error weight with the measured output change (see the module docstring)
FORECAST_EARLY_WEIGHT = 2.0  # the same with the forecast's miss as a skip's cost


@dataclass
class Trajectories:
    """What the simulator reads, float64 on the CPU: per step ``t``, ``jx``, ``jt``, the error weight ``weight`` and the
    forced steps; per sample ``reach[s, m]``, the summed drift from step 0 to step ``m``, and ``change[s, r, m]``, the
    measured output change from step ``r`` to ``m`` (None: the profile has none for ``max_skips + 1`` steps)."""

    t: torch.Tensor
    jx: torch.Tensor
    jt: torch.Tensor
    weight: torch.Tensor
    reach: torch.Tensor
    root_n: float
    forced: torch.Tensor
    max_skips: int
    change: torch.Tensor | None = None
    forecast: bool = False

    def skip_cost(self, s0: torch.Tensor, s1: torch.Tensor, m: torch.Tensor, rows: torch.Tensor | slice = slice(None)
                  ) -> torch.Tensor:
        """The measured output change a skip at step ``m`` misses with the last computed steps ``s0 < s1``
        (``s0 == s1``: only one so far), per sample (``rows``): reusing ``f(s1)``, ``||f_m - f_{s1}||``; with the
        forecast, ``||f_m - f_{s1} - w (f_{s1} - f_{s0})||``, ``w = (m - s1) / (s1 - s0)``, which the three
        distances between the steps' outputs fix (the sides of a triangle fix any combination of its corners whose
        weights sum to 0): ``(1 + w) d(m, s1)^2 - w d(m, s0)^2 + w (1 + w) d(s1, s0)^2``."""
        d1 = self.change[rows, s1, m]
        if not self.forecast:
            return d1
        w = torch.where(s1 > s0, (m - s1).double() / (s1 - s0).clamp_min(1), 0.0)
        d0, d10 = self.change[rows, s0, m], self.change[rows, s0, s1]
        return torch.where(w > 0, ((1 + w) * d1**2 - w * d0**2 + w * (1 + w) * d10**2).clamp_min(0).sqrt(), d1)

    @classmethod
    def from_profile(cls, profile: SensitivityProfile, max_skips: int, force_first: int | None = None,
                     force_last: int | None = None, start_fraction: float = 0.2, forecast: str = "reuse"
                     ) -> Trajectories:
        """The profile's trajectories; ``force_first``/``force_last`` None: the model's defaults (its adapter);
        ``start_fraction``: the steps whose errors weigh more; ``forecast``: ``SenCacheConfig.forecast`` (``"linear"``
        costs a skip by the forecast's miss where the change table spans ``2 max_skips + 1`` steps)."""
        missing = missing_tables(profile)
        if missing:
            raise ValueError(
                f"planning tolerances for a speed target needs the calibration trajectories a profile records (drift "
                f"per sample, timestep gaps, latent size); this profile has no {', '.join(missing)} (it was made by "
                "an older sencache or by hand). Recalibrate with sencache.calibrate(pipe, ...) or `sencache calibrate "
                "PIPELINE_DIR ...`, or give eps/eps_start instead of a target"
            )
        from sencache.adapters import find_adapter

        adapter = find_adapter(str(profile.metadata.get("transformer_class")))
        first = (adapter.force_first_steps if adapter else 1) if force_first is None else force_first
        last = (adapter.force_last_steps if adapter else 0) if force_last is None else force_last
        n = len(profile)
        steps = torch.arange(n)
        drift = profile.drift_samples
        reach = torch.cat([torch.zeros(drift.shape[0], 1, dtype=torch.float64), drift[:, :-1].cumsum(1)], dim=1)
        gap = torch.cat([profile.dt[:-1], profile.timesteps[-1:].abs()])  # (the profile's dt repeats the gap before)
        ds = gap / profile.timesteps.abs().max()
        growth = (1 + ds * profile.jx).flip(0).cumprod(0).flip(0)  # growth[m]: over steps m .. n - 1
        later = torch.cat([growth[1:], torch.ones(1, dtype=growth.dtype)])
        change = None
        if profile.change_samples is not None and profile.change_samples.shape[2] >= max_skips + 1:
            change = torch.zeros(drift.shape[0], n, n, dtype=torch.float64)
            for j in range(1, min(profile.change_samples.shape[2], n - 1) + 1):
                change[:, steps[:-j], steps[j:]] = profile.change_samples[:, :-j, j - 1]
        linear = forecast == "linear" and change is not None and profile.change_samples.shape[2] >= 2 * max_skips + 1
        early = (FORECAST_EARLY_WEIGHT if linear else EARLY_WEIGHT) if change is not None else 1 / EPS_START_RATIO
        weight = ds * later * torch.where(steps < start_fraction * n, early, 1.0)
        return cls(profile.timesteps, profile.jx, profile.jt, weight, reach,
                   math.sqrt(profile.metadata["latent_numel"]), (steps < max(1, first)) | (steps >= n - last),
                   max_skips, change, linear)

    def scores(self, reach: torch.Tensor) -> torch.Tensor:
        """``[..., r, m]``: the score at step ``m`` with reference ``r``, for trajectories ``reach [..., n]``."""
        dx = (reach.unsqueeze(-2) - reach.unsqueeze(-1)).abs()
        return self.jx[:, None] * dx + self.jt[:, None] * (self.t[None, :] - self.t[:, None]).abs()

def missing_tables(profile: SensitivityProfile) -> list[str]:
    """What a plan needs that ``profile`` lacks (profiles made before the planning tables, or by hand)."""
    missing = [k for k in ("drift_samples", "dt") if getattr(profile, k) is None]
    return missing + ([] if "latent_numel" in profile.metadata else ["metadata latent_numel"])

def simulate(traj: Trajectories, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decision rule on every sample with the tolerances ``eps [n]``: ``(computed [S, n] bool, error [S])``, the
    error summing ``weight_m`` times the output change (measured, else the score) over the skipped steps."""
    s, n = traj.reach.shape
    rows = torch.arange(s)
    ref = prev = torch.zeros(s, dtype=torch.long)  # the last two computed steps (equal: one so far)
    skips = torch.zeros(s, dtype=torch.long)
    computed = torch.ones(s, n, dtype=torch.bool)
    error = torch.zeros(s, dtype=torch.float64)
    for m in range(1, n):
        dx = traj.reach[:, m] - traj.reach[rows, ref]
        score = traj.jx[ref] * dx + traj.jt[ref] * (traj.t[m] - traj.t[ref]).abs()
        skip = (score <= eps[m] * traj.root_n) & (skips < traj.max_skips) & ~traj.forced[m]
        computed[:, m] = ~skip
        change = score if traj.change is None else traj.skip_cost(prev, ref, torch.tensor(m), rows)
        error += torch.where(skip, traj.weight[m] * change, 0.0)
        skips = torch.where(skip, skips + 1, 0)
        prev = torch.where(skip, prev, ref)
        ref = torch.where(skip, ref, m)
    return computed, error


def choose_steps(traj: Trajectories, count: int) -> torch.Tensor | None:
    """The ``count`` steps to compute (a bool mask) that minimise the predicted error of the mean trajectory under the
    cap on consecutive skips and the forced steps, by dynamic programming over the last two computed steps (what a
    skip costs depends on both with the forecast); None when no such choice exists."""
    n, k = traj.t.numel(), traj.max_skips
    if traj.change is None:
        mean = traj.scores(traj.reach.mean(0))[None]  # [s0, r, m]: skipping m after r (here whatever s0 before it)
    elif not traj.forecast:
        mean = traj.change.mean(0)[None]
    else:  # [s0, r, m], one s0 at a time (all at once would hold samples x n^3 values)
        steps = torch.arange(n)
        mean = torch.stack([traj.skip_cost(s0, steps[:, None], steps[None, :]).mean(0) for s0 in steps])
    run = (traj.weight * mean).cumsum(-1).tolist()  # run[.][r][m]: skipping every step from r + 1 to m
    one = len(run) == 1

    def seg(s0: int, r: int, j: int) -> float:  # skip the steps strictly between r and j, the last two computed s0, r
        row = run[0 if one else s0][r]
        return row[j - 1] - row[r] if j > r + 1 else 0.0

    forced_before = [0, *torch.cumsum(traj.forced.long(), 0).tolist()]  # forced steps in [0, m) at index m

    def free(r: int, j: int) -> bool:  # the steps between r and j may all be skipped
        return j - r - 1 <= k and forced_before[j] - forced_before[r + 1] == 0

    # best[c][j][d]: the least error with c computed steps, the last at j and the one before at j - d (d = 0: none)
    inf, width = math.inf, k + 2
    best = [[[inf] * width for _ in range(n)] for _ in range(count + 1)]
    came = [[[-1] * width for _ in range(n)] for _ in range(count + 1)]
    best[1][0][0] = 0.0
    for c in range(2, count + 1):
        for j in range(c - 1, n):
            for r in range(max(c - 2, j - k - 1), j):
                if not free(r, j):
                    continue
                here = best[c - 1][r]
                for d in range(width - 1, -1, -1):  # on ties the earlier step before r (as one state per step)
                    if here[d] < inf:
                        v = here[d] + seg(r - d, r, j)
                        if v < best[c][j][j - r]:
                            best[c][j][j - r], came[c][j][j - r] = v, d
    ends = [(v + seg(r - d, r, n), r, -d) for r in range(n) if free(r, n)
            for d, v in enumerate(best[count][r]) if v < inf]
    if not ends:
        return None
    mask = torch.zeros(n, dtype=torch.bool)
    _, r, d = min(ends)
    c, d = count, -d
    while r >= 0:
        mask[r] = True
        c, r, d = c - 1, r - d if d else -1, came[c][r][d]
    return mask
