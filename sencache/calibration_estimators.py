"""The finite differences ``calibrate`` takes along one sampling run: ``"chained"`` (the default) and ``"central"``.

Both measure, per step ``k`` and sample, on the conditional branch, with L2 norms over the whole output::

    Jx(t_k) = ||f(x_{k+1}, t_k) - f(x_k, t_k)|| / ||x_{k+1} - x_k||      (x_{k+1}: the solver's next latent)

and differ in where ``Jt`` is taken:

- ``"central"``: at ``x_k``, ``Jt(t_k) = ||f(x_k, t_{k+1}) - f(x_k, t_k)|| / |t_{k+1} - t_k|`` (``t_{k-1}`` at the
  last step). Two extra conditional evaluations per step (2x the transformer rows of a CFG generation).
- ``"chained"``: at ``x_{k+1}``, ``Jt(t_k) = ||f(x_{k+1}, t_{k+1}) - f(x_{k+1}, t_k)|| / |t_{k+1} - t_k|``: the first
  term is the sampler's own next evaluation and the second the one ``Jx`` already needed, so one extra conditional
  evaluation per step (1.5x the rows of a CFG generation). A step whose successor is run by another transformer (the
  last step; Wan 2.2's last step on an expert) has no such pair on its own transformer; it takes the backward
  difference at its own latent, ``||f(x_k, t_k) - f(x_k, t_{k-1})|| / |t_k - t_{k-1}|``, which is exactly the pair
  step ``k - 1`` measured when the same transformer ran it: reused, no evaluation (else one evaluation).

The extra evaluations always use the transformer that ran step ``k``, with its call's other arguments; under batched
CFG only the conditional half of the batch is evaluated.

Both also record, at no extra evaluation, the change of the conditional output from each step to the next
``CHANGE_WINDOW`` steps, ``||f(x_{k+j}, t_{k+j}) - f(x_k, t_k)||`` for ``j = 1 .. CHANGE_WINDOW`` (0 past the last
step): what reusing step ``k``'s output at step ``k + j`` misses, which the planner (``sencache.planner``) weighs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ESTIMATORS = ("chained", "central")
CHANGE_WINDOW = 8  # steps after each step whose output change is recorded (up to 7 consecutive skips)


def per_sample_norm(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a.double().reshape(a.shape[0], -1), dim=1)


@dataclass
class Point:
    """Step ``k``'s leading call: the hook of the transformer that ran it, its arguments, its input latent (the whole
    batch) and its conditional output ``f(x_k, t_k)``."""

    hook: Any
    args: tuple
    kwargs: dict
    x: torch.Tensor
    f: torch.Tensor


class Estimator:
    """Per-run tables of one estimator, filled step by step (``on_point`` on each step's leading call, ``on_latents``
    with the latent after each step)."""

    def __init__(self, cal: Any) -> None:
        self.cal = cal  # the shared _Calibration: schedule, cond(), step index
        n = len(cal.schedule)
        self.jx: list[torch.Tensor | None] = [None] * n
        self.jt: list[torch.Tensor | None] = [None] * n
        self.drift: list[torch.Tensor | None] = [None] * n
        self.change: list[torch.Tensor] = []  # per step: [samples, CHANGE_WINDOW], made on the first step
        self.points: list[Point | None] = []  # only the last two are kept (latents and outputs can be large)
        self.outputs: list[torch.Tensor] = []  # the last CHANGE_WINDOW conditional outputs
        self.hooks: list[Any] = []  # the transformer (its hook) that ran each step

    def _jx(self, k: int, x_next: torch.Tensor) -> torch.Tensor:
        """Jx of step k from its latent ``x_next`` (whole batch); records the drift; returns f(x_{k+1}, t_k)."""
        p, cond = self.points[k], self.cal.cond
        g = p.hook.eval(p.args, p.kwargs, latent=x_next)
        dx = per_sample_norm(cond(x_next) - cond(p.x))
        self.drift[k] = dx
        self.jx[k] = per_sample_norm(g - p.f) / dx.clamp_min(1e-30)
        return g

    def _jt_at(self, k: int, other: int) -> torch.Tensor:
        """||f(x_k, t_other) - f(x_k, t_k)|| / |t_other - t_k| with step k's transformer (one evaluation)."""
        p, ts = self.points[k], self.cal.schedule
        t = p.hook.args.get(p.args, p.kwargs, p.hook.adapter.timestep_arg)
        g = p.hook.eval(p.args, p.kwargs, t=torch.full_like(t, ts[other]))
        return per_sample_norm(g - p.f) / abs(ts[other] - ts[k])

    def _add(self, k: int, p: Point) -> None:
        if k == 0:
            self.change = [p.f.new_zeros(p.f.shape[0], CHANGE_WINDOW, dtype=torch.float64) for _ in self.jx]
        for j, f in enumerate(reversed(self.outputs), start=1):  # f: step k - j's output
            self.change[k - j][:, j - 1] = per_sample_norm(p.f - f)
        self.outputs = [*self.outputs[1 - CHANGE_WINDOW:], p.f]
        self.points.append(p)
        self.hooks.append(p.hook)
        if k >= 2:
            self.points[k - 2] = None

    def next_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's latent after a step as the transformer takes it (batched CFG doubles it)."""
        x = self.points[-1].x
        if latents.shape[0] != x.shape[0]:
            latents = torch.cat([latents] * (x.shape[0] // latents.shape[0]))
        return latents.to(x.dtype)


class Central(Estimator):
    def on_point(self, k: int, p: Point) -> None:
        self._add(k, p)
        other = k + 1 if k + 1 < len(self.cal.schedule) else k - 1
        self.jt[k] = self._jt_at(k, other)

    def on_latents(self, k: int, latents: torch.Tensor) -> None:
        self._jx(k, self.next_latent(latents))


class Chained(Estimator):
    def on_point(self, k: int, p: Point) -> None:
        self._add(k, p)
        if k == 0:
            return
        prev = self.points[k - 1]
        g = self._jx(k - 1, p.x)  # f(x_k, t_{k-1}) on step k-1's transformer
        if p.hook is prev.hook:  # against the sampler's f(x_k, t_k)
            ts = self.cal.schedule
            self.jt[k - 1] = per_sample_norm(p.f - g) / abs(ts[k] - ts[k - 1])
        else:  # Wan 2.2: the other expert runs step k
            self._backward_jt(k - 1)

    def on_latents(self, k: int, latents: torch.Tensor) -> None:
        if k == len(self.cal.schedule) - 1:  # the last step: no next call
            self._jx(k, self.next_latent(latents))
            self._backward_jt(k)

    def _backward_jt(self, k: int) -> None:
        if k >= 1 and self.hooks[k - 1] is self.hooks[k]:
            self.jt[k] = self.jt[k - 1]  # the same pair: f(x_k, t_k) against f(x_k, t_{k-1}), same transformer
        else:
            self.jt[k] = self._jt_at(k, k - 1 if k >= 1 else k + 1)


def make(name: str, cal: Any) -> Estimator:
    return Chained(cal) if name == "chained" else Central(cal)
