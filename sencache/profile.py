"""``SensitivityProfile``: the calibrated Jx(t), Jt(t) tables of one model + scheduler, with save/load and lookup."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

PROFILE_FORMAT = 1
INTERPOLATIONS = ("linear", "nearest")


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
    """

    timesteps: torch.Tensor
    jx: torch.Tensor
    jt: torch.Tensor
    metadata: dict = field(default_factory=dict)
    jx_samples: torch.Tensor | None = None
    jt_samples: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.timesteps = torch.as_tensor(self.timesteps, dtype=torch.float64).detach().cpu()
        self.jx = torch.as_tensor(self.jx, dtype=torch.float64).detach().cpu()
        self.jt = torch.as_tensor(self.jt, dtype=torch.float64).detach().cpu()
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
        for name in ("jx_samples", "jt_samples"):
            v = getattr(self, name)
            if v is not None:
                v = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
                if v.dim() != 2 or v.shape[1] != n:
                    raise ValueError(f"SensitivityProfile: {name} must be [num_samples, {n}], got {tuple(v.shape)}")
                setattr(self, name, v)
        self.metadata = dict(self.metadata)
        # Ascending tables for lookup, and per-device float32 copies made on first use.
        self._sorted = (sorted_t, self.jx[order], self.jt[order])
        self._device_tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return self.timesteps.numel()

    # ------------------------------------------------------------------ lookup
    def lookup(self, t: torch.Tensor, interpolation: str = "linear") -> tuple[torch.Tensor, torch.Tensor]:
        """``(Jx(t), Jt(t))`` as float32 tensors on ``t``'s device, with no host synchronisation.

        Between the neighbouring table entries ``lo < hi``: ``w = clamp((t - t_lo) / (t_hi - t_lo), 0, 1)`` and
        ``J(t) = J_lo + w * (J_hi - J_lo)`` in float32 (``w`` rounded to 0 or 1 for ``"nearest"``).

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
            w = (w > 0.5).to(torch.float32)
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
        want = self.metadata.get("transformer_class")
        got = type(transformer).__name__
        if want is not None and want != got:
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

    # ---------------------------------------------------------------- file I/O
    def save(self, path: str | os.PathLike) -> None:
        """Write the profile as one safetensors file (tables as tensors, metadata as JSON in the header)."""
        from safetensors.torch import save_file

        tensors = {"timesteps": self.timesteps, "jx": self.jx, "jt": self.jt}
        if self.jx_samples is not None:
            tensors["jx_samples"] = self.jx_samples
        if self.jt_samples is not None:
            tensors["jt_samples"] = self.jt_samples
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
        if int(header.get("format", "0")) > PROFILE_FORMAT:
            raise ValueError(f"{path!r} has profile format {header['format']}; upgrade sencache to read it")
        return cls(
            timesteps=tensors["timesteps"], jx=tensors["jx"], jt=tensors["jt"],
            metadata=json.loads(header["metadata"]),
            jx_samples=tensors.get("jx_samples"), jt_samples=tensors.get("jt_samples"),
        )
