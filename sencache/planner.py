"""Tolerances for a speed target, planned on the host from a profile's calibration trajectories (no model runs).

``SenCacheConfig(profile=..., target_nfe=N)`` (or ``speedup=s``, ``N = steps / s``) asks for the tolerances whose
expected number of block-stack evaluations (NFE) in a generation is ``N``. The planner simulates the decision rule
(``Jx(t_r) ||x_m - x_r|| + Jt(t_r) |t_m - t_r| <= eps_m sqrt(numel)``, at most ``K`` skips in a row, forced steps) on
every calibration sample the profile recorded, with the profile's ``Jx, Jt`` tables as the runtime looks them up; the
runtime still decides per sample. The expected NFE is the mean over those samples.

The profile holds the drift of single steps, ``||x_{k+1} - x_k||``, per sample. For the distance from a reference
step ``r`` to a later step ``m`` the simulator takes their sum, ``sum_{k=r}^{m-1} ||x_{k+1} - x_k||``: exact for a
trajectory that runs straight over the skipped steps (flow matching whose velocity stays put), an upper bound
otherwise (triangle inequality), so a prediction errs towards computing more. The trajectories are the uncached ones;
a cached run drifts a little differently.

Schedules:

- ``"fixed"``: one ``eps`` after a start phase (``eps_start = EPS_START_RATIO * eps`` for the first
  ``start_fraction`` of the steps), ``eps`` found by bisection on the predicted NFE.
- ``"planned"``: eps(t), one tolerance per step. Dynamic programming picks the ``round(N)`` steps to compute that
  minimise the predicted error of the mean calibration trajectory. Skipping step ``m`` with reference ``r`` costs
  ``w_m c(r, m)``, the change of the output that reusing step ``r``'s misses times a weight. ``c(r, m)`` is the change
  the profile measured along the calibration runs, ``||f(x_m, t_m) - f(x_r, t_r)||`` (``change_samples``), and for
  profiles without that table (or with a window shorter than ``K + 1`` steps) its first-order bound, the decision's
  score ``Jx(t_r) ||x_m - x_r|| + Jt(t_r) |t_m - t_r|``. The weight: the output error moves the next latent by
  ``ds_m`` times it (``ds_m = gap_m / t_0``, the step's timestep gap on the scale where the first timestep is 1, the
  last step running to t = 0), and each later step ``k`` can grow that error at most ``1 + ds_k Jx(t_k)`` times
  (``x_{k+1} = x_k + ds_k f``, to first order); in the first ``start_fraction`` of the steps it weighs more, a prior:
  the later steps amplify early errors more than the first-order bound says. With the measured change that factor is
  ``EARLY_WEIGHT`` (4), with the bound ``1 / EPS_START_RATIO`` (14, the value the fixed schedule puts on an early
  error: its tolerance there is that much tighter; the bound already overrates the middle steps' change about 4x
  against the early and late ones). Both factors are empirical: on the reference model the bound without the prior
  lost 8 and 9 dB PSNR to the fixed schedule on 2 held-out pairs at 20 of 50 steps, and the factor 4 for the measured
  change was chosen on 6 development pairs (neither held-out nor calibration) by how the predicted error ranked the
  quality of the schedules run on them (6 ranks them a little better and chooses the same steps there;
  ``benchmarks/results/planner_dev_cpu/``).
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

from sencache.config import EPS_START_RATIO
from sencache.profile import SensitivityProfile

SCHEDULES = ("fixed", "planned")
_MARGIN = 2.0  # the planned table's margin is at most this factor each way (a sample drifting 2x the mean skips alike)
EARLY_WEIGHT = 4.0  # the early steps' error weight with the measured output change (see the module docstring)
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
        early = EARLY_WEIGHT if change is not None else 1 / EPS_START_RATIO
        weight = ds * later * torch.where(steps < start_fraction * n, early, 1.0)
        linear = forecast == "linear" and change is not None and profile.change_samples.shape[2] >= 2 * max_skips + 1
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
    else:
        steps = torch.arange(n)
        mean = traj.skip_cost(steps[:, None, None], steps[None, :, None], steps[None, None, :]).mean(0)
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
