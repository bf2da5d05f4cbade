"""``SensitivityProfile``: the calibrated Jx(t), Jt(t) tables of one model + scheduler, with save/load and lookup."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

PROFILE_FORMAT = 1
INTERPOLATIONS = ("linear", "nearest")
# A profile covers a scheduler's timestep range when at most this fraction of the range lies outside its table. A
# profile ends a little inside the full range (50 steps: CogVideoX's DDIM [19, 999] of [0, 999], 2%; Wan's flow matching
# with shift 7, [47, 1000] of [7, 1000], 4%), where the lookup holds its end values; one in other units ([0, 1] for
# [0, 1000]) or made for another part of the schedule leaves most of the range out.
COVERAGE_SLACK = 0.25


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# The metadata fields the runtime reads, and what each must be when present (a saved profile must name its class).
_FIELDS = {
    "transformer_class": (lambda v: isinstance(v, str) and v != "", "a non-empty string (the transformer's class)"),
    "transformer_config_hash": (lambda v: isinstance(v, str), "a string"),
    "scheduler_class": (lambda v: isinstance(v, str) and v != "", "a non-empty string (the scheduler's class)"),
    "scheduler_config": (lambda v: isinstance(v, Mapping), "a JSON object"),
    "num_inference_steps": (_positive_int, "an integer >= 1"),
    "num_samples": (_positive_int, "an integer >= 1"),
    "guidance_contexts": (_positive_int, "an integer >= 1"),
    "latent_numel": (_positive_int, "an integer >= 1 (elements per sample of the transformer's latent)"),
}
# Optional tables of what planning needs (profiles from before they existed load without them): per step, the
# latent drift ||x_{k+1} - x_k|| over the calibration samples (mean, spread, per sample) and the timestep gap.
_STEP_TABLES = ("drift", "drift_std", "dt")
_SAMPLE_TABLES = ("jx_samples", "jt_samples", "drift_samples")
_WINDOW_TABLES = ("change_samples",)  # [num_samples, steps, window]


def check_metadata(metadata: Any, require_class: bool = False) -> dict:
    """``metadata`` as a dict, after checking the fields the runtime reads; ValueError naming the field otherwise.

    Args:
        metadata: a profile's metadata (a JSON object once saved).
        require_class: also refuse a missing ``transformer_class`` (a saved or applied profile must name it).
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a JSON object (a dict), got {type(metadata).__name__}")
    for name, (ok, what) in _FIELDS.items():
        if name in metadata and not ok(metadata[name]):
            raise ValueError(f"metadata field {name!r} must be {what}, got {_short(metadata[name])}")
    if require_class and "transformer_class" not in metadata:
        raise ValueError("metadata field 'transformer_class' (the transformer it was calibrated for) is missing")
    return dict(metadata)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _table(name: str, v: Any) -> torch.Tensor:
    """``v`` as a float64 CPU tensor; complex or boolean values are refused."""
    t = torch.as_tensor(v)
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"SensitivityProfile: {name} must hold real numbers, got {t.dtype}")
    return t.detach().to(device="cpu", dtype=torch.float64)


def config_hash(config: Any) -> str:
    """A stable short hash of a diffusers config (private ``_*`` keys ignored)."""
    items = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
    blob = json.dumps(items, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _public_config(config: Any) -> dict:
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not str(k).startswith("_")}, default=str))


def describe_components(transformer: torch.nn.Module, scheduler: Any | None) -> dict:
    """The metadata that ties a profile to a transformer (class, config hash) and a scheduler (class, config)."""
    meta = {
        "transformer_class": type(transformer).__name__,
        "transformer_config_hash": config_hash(getattr(transformer, "config", {})),
    }
    if scheduler is not None:
        meta["scheduler_class"] = type(scheduler).__name__
        meta["scheduler_config"] = _public_config(getattr(scheduler, "config", {}))
    return meta


@dataclass(eq=False)
class SensitivityProfile:
    """Calibrated sensitivities of a denoiser along its sampling schedule.

    Args:
        timesteps: the schedule's timesteps, 1-D, distinct (any order; the scheduler's order is kept).
        jx: ``Jx(t)``, sensitivity of the output to the latent, same length, finite and >= 0.
        jt: ``Jt(t)``, sensitivity of the output to the timestep, same length, finite and >= 0.
        metadata: what the profile was made with: ``transformer_class``, ``transformer_config_hash``,
            ``scheduler_class``, ``scheduler_config``, ``num_inference_steps``, ``num_samples``, ``dtype``,
            ``sencache_version``; free-form otherwise.
        jx_samples: optional per-sample values ``[num_samples, len(timesteps)]`` (for spreads and plots).
        jt_samples: optional, like ``jx_samples``.
        drift: optional per-step mean over the calibration samples of the latent drift ``||x_{k+1} - x_k||``.
        drift_std: optional per-step standard deviation of that drift over the samples (0 with one sample).
        dt: optional per-step timestep gap ``|t_{k+1} - t_k|`` (the last step: the gap before it).
        drift_samples: optional per-sample drift, like ``jx_samples``.
        change_samples: optional ``[num_samples, len(timesteps), window]``: per sample and step ``k``, the change of
            the conditional output to step ``k + j``, ``||f(x_{k+j}, t_{k+j}) - f(x_k, t_k)||`` at ``[..., j - 1]``
            (0 past the last step).
    """

    timesteps: torch.Tensor
    jx: torch.Tensor
    jt: torch.Tensor
    metadata: dict = field(default_factory=dict)
    jx_samples: torch.Tensor | None = None
    jt_samples: torch.Tensor | None = None
    drift: torch.Tensor | None = None
    drift_std: torch.Tensor | None = None
    dt: torch.Tensor | None = None
    drift_samples: torch.Tensor | None = None
    change_samples: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.timesteps, self.jx, self.jt = (_table(k, getattr(self, k)) for k in ("timesteps", "jx", "jt"))
        n = self.timesteps.numel()
        if self.timesteps.dim() != 1 or n < 1:
            raise ValueError(
                f"SensitivityProfile: timesteps must be a non-empty 1-D tensor, got {tuple(self.timesteps.shape)}"
            )
        for name in ("jx", "jt"):
            v = getattr(self, name)
            if v.shape != self.timesteps.shape:
                raise ValueError(f"SensitivityProfile: {name} has shape {tuple(v.shape)}, timesteps has ({n},)")
            if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
                raise ValueError(f"SensitivityProfile: {name} must be finite and >= 0; recalibrate the profile")
        if not bool(torch.isfinite(self.timesteps).all()):
            raise ValueError("SensitivityProfile: timesteps must be finite")
        order = torch.argsort(self.timesteps)
        sorted_t = self.timesteps[order]
        if n > 1 and not bool((sorted_t[1:] > sorted_t[:-1]).all()):
            raise ValueError("SensitivityProfile: timesteps must be distinct")
        for name in _SAMPLE_TABLES + _STEP_TABLES + _WINDOW_TABLES:
            v = getattr(self, name)
            if v is not None:
                v = _table(name, v)
                dims = 2 if name in _SAMPLE_TABLES else 3 if name in _WINDOW_TABLES else 1
                axis = 0 if dims == 1 else 1  # the steps' axis; a window table has a window of >= 1 step
                if v.dim() != dims or v.shape[axis] != n or (dims == 3 and v.shape[2] == 0):
                    shape = {1: f"({n},)", 2: f"[num_samples, {n}]", 3: f"[num_samples, {n}, window]"}[dims]
                    raise ValueError(f"SensitivityProfile: {name} must be {shape}, got {tuple(v.shape)}")
                if not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
                    raise ValueError(f"SensitivityProfile: {name} must be finite and >= 0; recalibrate the profile")
                setattr(self, name, v)
        try:
            self.metadata = check_metadata(self.metadata)
        except ValueError as exc:
            raise ValueError(f"SensitivityProfile: {exc}") from None
        self._warned_ranges: set[tuple[float, float]] = set()  # check_range warns once per range
        # Ascending tables for lookup, and per-device float32 copies made on first use.
        self._sorted = (sorted_t, self.jx[order], self.jt[order])
        self._device_tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return self.timesteps.numel()

    # ------------------------------------------------------------------ lookup
    def lookup(self, t: torch.Tensor, interpolation: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
        """``(Jx(t), Jt(t))`` as float32 tensors on ``t``'s device, with no host synchronisation.

        Between the neighbouring table entries ``lo < hi``: ``w = clamp((t - t_lo) / (t_hi - t_lo), 0, 1)`` and
        ``J(t) = J_lo + w * (J_hi - J_lo)`` in float32 (``w`` rounded to 0 or 1 for ``"nearest"``; a tie, ``t``
        half-way between two entries, takes the larger timestep, as the authors' reference code does).

        Args:
            t: timesteps, any shape (float or integer); values outside the table are clamped to its ends.
            interpolation: ``"linear"`` between neighbouring table entries, or ``"nearest"`` entry.
        """
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        ts, table = self._tables(t.device)
        tq = t.to(torch.float32)
        if ts.numel() == 1:  # a single entry: the table is [[Jx], [Jt]]
            return table[0].expand(tq.shape).clone(), table[1].expand(tq.shape).clone()
        # One gather per step: column hi of the table holds the interval [hi - 1, hi] (column 0 is never read).
        g = table[:, torch.searchsorted(ts, tq.contiguous()).clamp_(1, ts.numel() - 1)]
        w = ((tq - g[0]) / g[1]).clamp_(0.0, 1.0)
        if interpolation == "nearest":
            w = (w >= 0.5).to(torch.float32)  # ties to t_hi, the larger timestep
        j = g[2:4] + w * g[4:6]
        return j[0], j[1]

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The ascending timesteps and, by upper index ``hi``, the interval table ``[t_lo, t_hi - t_lo, Jx_lo, Jt_lo,
        Jx_hi - Jx_lo, Jt_hi - Jt_lo]`` (``[6, len]``, column 0 unused), float32 on ``device``, made on first use."""
        tables = self._device_tables.get(device)
        if tables is None:
            ts, jx, jt = (v.to(device=device, dtype=torch.float32) for v in self._sorted)
            if ts.numel() == 1:
                tables = (ts, torch.stack([jx, jt]))
            else:
                lows = [torch.cat([v[:1], v[:-1]]) for v in (ts, jx, jt)]  # v[hi - 1] at column hi
                steps = [torch.cat([v[:1], v[1:] - v[:-1]]) for v in (ts, jx, jt)]  # v[hi] - v[hi - 1]
                tables = (ts, torch.stack([lows[0], steps[0], lows[1], lows[2], steps[1], steps[2]]))
            self._device_tables[device] = tables
        return tables

    # ------------------------------------------------------------ compatibility
    def check_compatible(self, transformer: torch.nn.Module, scheduler: Any | None = None) -> None:
        """Raise ValueError if this profile was calibrated for another transformer class or scheduler family.

        A different config of the same transformer class (another size) only warns: the curves may still be close.
        """
        try:
            want = check_metadata(self.metadata, require_class=True)["transformer_class"]
        except ValueError as exc:
            raise ValueError(f"this profile cannot be applied: {exc}; make profiles with sencache.calibrate(pipe, "
                             "...), or give metadata={'transformer_class': type(pipe.transformer).__name__} to one "
                             "made by hand") from None
        got = type(transformer).__name__
        if want != got:
            raise ValueError(
                f"profile was calibrated for {want}, got {got}; recalibrate with sencache.calibrate(pipe, ...)"
            )
        want_hash = self.metadata.get("transformer_config_hash")
        if want_hash is not None and want_hash != config_hash(getattr(transformer, "config", {})):
            warnings.warn(
                f"the profile was calibrated on a {want} with another config (hash {want_hash}); its sensitivities "
                "may not fit this model. Recalibrate with sencache.calibrate(pipe, ...) if quality drops.",
                stacklevel=3,
            )
        self.check_scheduler(scheduler)

    def check_scheduler(self, scheduler: Any | None) -> None:
        """Raise ValueError if this profile was calibrated with another scheduler class than ``scheduler`` (the one
        a pipeline uses now; None: unknown, nothing to check)."""
        want_sched = self.metadata.get("scheduler_class")
        if scheduler is not None and want_sched is not None and want_sched != type(scheduler).__name__:
            raise ValueError(
                f"profile was calibrated with the scheduler {want_sched}, the pipeline uses "
                f"{type(scheduler).__name__}; recalibrate with sencache.calibrate(pipe, ...) for this scheduler"
            )

    def check_range(self, lo: float, hi: float, stacklevel: int = 2) -> bool:
        """Whether this profile's timesteps cover ``[lo, hi]``, the range a scheduler runs over: at most
        ``COVERAGE_SLACK`` of it may lie outside the table, where the lookup holds the table's end values. If not, warn
        (once per range and profile) with both ranges, e.g. a profile calibrated on [0, 1] used on [0, 1000].

        Args:
            lo, hi: the scheduler's smallest and largest timestep (``scheduler_range(scheduler)``).
            stacklevel: passed to ``warnings.warn``.
        """
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"check_range needs finite lo <= hi, got [{lo}, {hi}]")
        p_lo, p_hi = float(self._sorted[0][0]), float(self._sorted[0][-1])
        if hi > lo:
            outside, scale = max(0.0, min(hi, p_lo) - lo) + max(0.0, hi - max(lo, p_hi)), hi - lo
        else:  # a single timestep: its distance to the table, against the span of both
            outside, scale = max(0.0, p_lo - lo, lo - p_hi), max(hi, p_hi) - min(lo, p_lo)
        if outside <= COVERAGE_SLACK * scale:
            return True
        if (lo, hi) not in self._warned_ranges:
            self._warned_ranges.add((lo, hi))
            warnings.warn(
                f"the sensitivity profile covers timesteps [{p_lo:g}, {p_hi:g}], the scheduler runs over [{lo:g}, "
                f"{hi:g}]: {outside / scale:.0%} of its range lies outside the profile, where the lookup holds the "
                "profile's end values. Was the profile calibrated with this scheduler, in the same units? Recalibrate "
                "with sencache.calibrate(pipe, ...) for it.", stacklevel=stacklevel,
            )
        return False

    def check_scheduler_range(self, scheduler: Any | None) -> bool:
        """``check_range`` over ``scheduler_range(scheduler)`` (True when the scheduler tells no range), warning at
        the caller of the caller (``apply_sencache``'s)."""
        r = scheduler_range(scheduler)
        return True if r is None else self.check_range(*r, stacklevel=4)

    # ---------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as one safetensors file (tables as tensors, metadata as JSON in the header)."""
        from safetensors.torch import save_file

        tensors = {"timesteps": self.timesteps, "jx": self.jx, "jt": self.jt}
        for name in _SAMPLE_TABLES + _STEP_TABLES + _WINDOW_TABLES:
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        header = {"format": str(PROFILE_FORMAT), "metadata": json.dumps(self.metadata, sort_keys=True)}
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.fspath(path), metadata=header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SensitivityProfile:
        """Read a profile written by ``save``; raise ValueError if the file is not a SenCache profile."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no sensitivity profile at {path!r}; make one with sencache.calibrate(pipe, ...)")
        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path!r} is not a readable safetensors file: {exc}") from exc
        if "metadata" not in header or not {"timesteps", "jx", "jt"} <= tensors.keys():
            raise ValueError(f"{path!r} is not a SenCache sensitivity profile (missing tables or metadata)")
        fmt = header.get("format", str(PROFILE_FORMAT))
        if not re.fullmatch(r"[0-9]{1,9}", fmt):
            raise ValueError(f"{path!r}: header field 'format' must be a whole number, got {_short(fmt)}")
        if int(fmt) > PROFILE_FORMAT:
            raise ValueError(f"{path!r} has profile format {fmt} (field 'format'); upgrade sencache to read it")
        try:
            metadata = json.loads(header["metadata"])
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path!r}: header field 'metadata' is not valid JSON ({exc})") from None
        try:
            return cls(
                timesteps=tensors["timesteps"], jx=tensors["jx"], jt=tensors["jt"],
                metadata=check_metadata(metadata, require_class=True),
                **{name: tensors.get(name) for name in _SAMPLE_TABLES + _STEP_TABLES + _WINDOW_TABLES},
            )
        except ValueError as exc:
            msg = str(exc).removeprefix("SensitivityProfile: ").removesuffix("; recalibrate the profile")
            raise ValueError(f"{path!r}: {msg}; recalibrate with sencache.calibrate(pipe, ...) and save the profile "
                             "again") from None


def scheduler_range(scheduler: Any | None) -> tuple[float, float] | None:
    """The timesteps ``(lo, hi)`` a scheduler runs over: its current ``timesteps`` (those of its last
    ``set_timesteps``, or of its construction), else ``(0, num_train_timesteps)`` from its config; None if unknown."""
    ts = getattr(scheduler, "timesteps", None)
    if ts is not None:
        t = torch.as_tensor(ts).detach().flatten().to(device="cpu", dtype=torch.float64)
        t = t[torch.isfinite(t)]
        if t.numel():
            return float(t.min()), float(t.max())
    config = getattr(scheduler, "config", None)
    n = config.get("num_train_timesteps") if isinstance(config, Mapping) else None
    return (0.0, float(n)) if _positive_int(n) else None
