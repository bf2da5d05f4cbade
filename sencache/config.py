"""``SenCacheConfig``: the user's knobs, validated on construction."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError, dataclass, fields
from typing import Any

from sencache.profile import INTERPOLATIONS, SensitivityProfile


@dataclass
class SenCacheConfig:
    """Configuration of sensitivity-aware caching.

    At each step the block stack is skipped when ``Jx(t_ref) ||x - x_ref|| + Jt(t_ref) |t - t_ref|`` stays within
    ``tolerance * sqrt(numel(x_sample))`` for every sample and fewer than ``max_consecutive_skips`` steps were
    skipped in a row.

    Args:
        profile: the calibrated sensitivities (``sencache.calibrate`` or ``SensitivityProfile.load``).
        eps: RMS-per-element tolerance after the start phase (larger: more skips, lower fidelity); default 0.07.
        eps_start: tolerance during the first ``start_fraction`` of the steps, where errors matter most; default 0.005.
        start_fraction: fraction of the steps, in [0, 1], that use ``eps_start``.
        max_consecutive_skips: ``K``, the cap on consecutive skipped steps (0 disables skipping).
        force_first_steps: steps computed at the start whatever the score; ``None`` takes the model's default.
            At least the first step is always computed (nothing is cached before it).
        force_last_steps: steps computed at the end whatever the score; ``None`` takes the model's default.
        num_inference_steps: steps per generation, needed only when the transformer is used outside a pipeline
            that tells it (``apply_sencache`` on a bare transformer); otherwise read from the pipeline.
        interpolation: profile lookup between calibrated timesteps, ``"linear"`` or ``"nearest"``.
        target_nfe: instead of ``eps``/``eps_start``, the expected block-stack evaluations (NFE) of a generation of the
            profile's step count: the tolerances are planned for it from the profile's calibration trajectories
            (``sencache.planner``; no model runs) and kept in ``plan``; the decision stays per sample.
        speedup: alternatively, ``steps / NFE`` (``speedup=2`` is ``target_nfe = steps / 2``).
        schedule: with a target, ``"fixed"`` (one ``eps`` after an ``eps_start`` phase, as without a target) or
            ``"planned"`` (a tolerance per step, chosen to minimise the predicted error within the target).
        forecast: what a skipped step adds to the stack's input: ``"reuse"``, the residual of the last computed step
            (the paper's rule), or ``"linear"``, that residual extrapolated to first order in the step index from the
            last two computed steps (eager mode only; twice the residual memory). SenCache decides when to skip
            either way.

    A config is frozen once built: ``apply_sencache`` checks it against the model and its hooks keep reading it, so a
    later change could bypass the checks or apply only in part. To change a value, build a new config with
    ``dataclasses.replace(cfg, eps=0.1)`` (validated like any other) and call ``apply_sencache`` again.
    """

    profile: SensitivityProfile | None = None
    eps: float | None = None
    eps_start: float | None = None
    start_fraction: float = 0.2
    max_consecutive_skips: int = 3
    force_first_steps: int | None = None
    force_last_steps: int | None = None
    num_inference_steps: int | None = None
    interpolation: str = "linear"
    target_nfe: float | None = None
    speedup: float | None = None
    schedule: str = "fixed"
    forecast: str = "reuse"

    def __post_init__(self) -> None:
        if not isinstance(self.profile, SensitivityProfile):
            raise ValueError(
                f"SenCacheConfig needs a SensitivityProfile, got {type(self.profile).__name__}; make one with "
                "sencache.calibrate(pipe, ...) or load one with sencache.SensitivityProfile.load(path)"
            )
        targeted = self.target_nfe is not None or self.speedup is not None
        given = [f"{k}={getattr(self, k)!r}" for k in ("eps", "eps_start") if getattr(self, k) is not None]
        if targeted and given:
            raise ValueError(
                f"SenCacheConfig: give either a target (target_nfe/speedup: the tolerances are planned for it) or "
                f"the tolerances ({', '.join(given)}), not both; from a config with tolerances: dataclasses.replace("
                "config, target_nfe=..., eps=None, eps_start=None)"
            )
        if not targeted:
            if self.schedule != "fixed":
                raise ValueError(f"SenCacheConfig(schedule={self.schedule!r}) plans tolerances for a target: give "
                                 "target_nfe=... or speedup=... with it")
            object.__setattr__(self, "eps", DEFAULT_EPS if self.eps is None else self.eps)
            object.__setattr__(self, "eps_start", DEFAULT_EPS_START if self.eps_start is None else self.eps_start)
        for name in ("eps", "eps_start"):
            v = getattr(self, name)
            if v is None:  # with a target
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"SenCacheConfig.{name} must be a finite number >= 0, got {v!r}")
        f = self.start_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 <= f <= 1.0):
            raise ValueError(f"SenCacheConfig.start_fraction must be in [0, 1], got {f!r}")
        for name in ("max_consecutive_skips", "force_first_steps", "force_last_steps", "num_inference_steps"):
            v = getattr(self, name)
            if v is None and name != "max_consecutive_skips":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"SenCacheConfig.{name} must be an integer >= 0, got {v!r}")
        if self.num_inference_steps == 0:
            raise ValueError("SenCacheConfig.num_inference_steps must be >= 1 when given")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"SenCacheConfig.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        if self.forecast not in FORECASTS:
            raise ValueError(f"SenCacheConfig.forecast must be one of {FORECASTS}, got {self.forecast!r}")
        self.plan = None  # the planned tolerances (sencache.planner.Plan) when a target is given
        if targeted:
            from sencache import planner

            try:
                self.plan = planner.plan(self.profile, self.target_nfe, speedup=self.speedup, schedule=self.schedule,
                                         max_consecutive_skips=self.max_consecutive_skips,
                                         force_first_steps=self.force_first_steps,
                                         force_last_steps=self.force_last_steps, start_fraction=self.start_fraction,
                                         forecast=self.forecast)
            except ValueError as exc:
                raise ValueError(f"SenCacheConfig: {exc}") from None
            steps = self.num_inference_steps
            if steps is not None and steps != self.plan.steps:
                raise ValueError(f"SenCacheConfig: num_inference_steps={steps}, but a target is planned for the "
                                 f"profile's {self.plan.steps} steps; recalibrate at {steps} steps or drop the target")
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if not self.__dict__.get("_frozen"):  # __init__ filling the fields
            object.__setattr__(self, name, value)
            return
        if name not in {f.name for f in fields(self)}:
            raise AttributeError(f"SenCacheConfig has no field {name!r}; its fields are "
                                 f"{', '.join(f.name for f in fields(self))}")
        raise FrozenInstanceError(
            f"SenCacheConfig is frozen (cannot set {name} = {value!r}): build a new one with "
            f"dataclasses.replace(config, {name}=...), which is validated, and call sencache.apply_sencache(pipe, "
            "new_config) again"
        )

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"SenCacheConfig is frozen (cannot delete {name})")

    def tolerance(self, step: int, num_steps: int) -> float:
        """The tolerance in force at ``step`` of ``num_steps``: ``eps_start`` in the start phase, then ``eps``; with a
        target, the plan's tolerance of the step (ValueError at another step count than the plan's)."""
        if self.plan is not None:
            return self.plan.tolerance(step, num_steps)
        return self.eps_start if step < self.start_fraction * num_steps else self.eps


FORECASTS = ("reuse", "linear")
DEFAULT_EPS, DEFAULT_EPS_START = 0.07, 0.005
# SenCacheConfig's default eps_start / eps, kept along a sweep of eps (the quality benchmark's search, the demo).
EPS_START_RATIO = DEFAULT_EPS_START / DEFAULT_EPS
