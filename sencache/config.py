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
        eps: RMS-per-element tolerance after the start phase (larger: more skips, lower fidelity).
        eps_start: tolerance during the first ``start_fraction`` of the steps, where errors matter most.
        start_fraction: fraction of the steps, in [0, 1], that use ``eps_start``.
        max_consecutive_skips: ``K``, the cap on consecutive skipped steps (0 disables skipping).
        force_first_steps: steps computed at the start whatever the score; ``None`` takes the model's default.
            At least the first step is always computed (nothing is cached before it).
        force_last_steps: steps computed at the end whatever the score; ``None`` takes the model's default.
        num_inference_steps: steps per generation, needed only when the transformer is used outside a pipeline
            that tells it (``apply_sencache`` on a bare transformer); otherwise read from the pipeline.
        interpolation: profile lookup between calibrated timesteps, ``"linear"`` or ``"nearest"``.

    A config is frozen once built: ``apply_sencache`` checks it against the model and its hooks keep reading it, so a
    later change could bypass the checks or apply only in part. To change a value, build a new config with
    ``dataclasses.replace(cfg, eps=0.1)`` (validated like any other) and call ``apply_sencache`` again.
    """

    profile: SensitivityProfile | None = None
    eps: float = 0.07
    eps_start: float = 0.005
    start_fraction: float = 0.2
    max_consecutive_skips: int = 3
    force_first_steps: int | None = None
    force_last_steps: int | None = None
    num_inference_steps: int | None = None
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        if not isinstance(self.profile, SensitivityProfile):
            raise ValueError(
                f"SenCacheConfig needs a SensitivityProfile, got {type(self.profile).__name__}; make one with "
                "sencache.calibrate(pipe, ...) or load one with sencache.SensitivityProfile.load(path)"
            )
        for name in ("eps", "eps_start"):
            v = getattr(self, name)
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
        """The tolerance in force at ``step`` of ``num_steps``: ``eps_start`` in the start phase, then ``eps``."""
        return self.eps_start if step < self.start_fraction * num_steps else self.eps


# SenCacheConfig's default eps_start / eps, kept along a sweep of eps (the quality benchmark's search, the demo).
EPS_START_RATIO = SenCacheConfig.eps_start / SenCacheConfig.eps
