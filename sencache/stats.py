"""Per-call statistics: which steps were computed, the per-sample scores and thresholds, the NFE."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from sencache_kernels import COMPUTE


@dataclass
class CallStats:
    """What SenCache did during one pipeline call.

    Attributes:
        num_steps: steps of the schedule.
        timesteps: timestep of each recorded step (sample 0).
        computed: per step, whether the block stack ran (the batch decision).
        forced: per step, whether the step was computed by rule (first/last steps).
        thresholds: per step, ``tolerance * sqrt(numel per sample)`` the scores were compared with.
        scores: per step, the per-sample sensitivity scores ``[step][sample]`` (NaN where non-finite).
        block_stack_calls: block-stack evaluations over all contexts (e.g. cond and uncond).
    """

    num_steps: int
    timesteps: list[float] = field(default_factory=list)
    computed: list[bool] = field(default_factory=list)
    forced: list[bool] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)
    block_stack_calls: int = 0

    @property
    def nfe(self) -> int:
        """Computed steps (evaluations of the block stack per context)."""
        return sum(self.computed)

    @property
    def skipped(self) -> int:
        """Skipped steps."""
        return len(self.computed) - self.nfe

    @property
    def wants_compute(self) -> list[list[bool]]:
        """Per step and sample, whether that sample's score alone asked for a computed step."""
        rows = zip(self.scores, self.thresholds, strict=True)
        return [[not (math.isfinite(s) and s <= thr) for s in row] for row, thr in rows]

    def timeline(self) -> str:
        """One character per step: ``F`` forced, ``C`` computed by score, ``.`` skipped."""
        return "".join("F" if f else ("C" if c else ".") for c, f in zip(self.computed, self.forced, strict=True))

    def __str__(self) -> str:
        n = len(self.computed)
        return (f"SenCache: {self.nfe}/{n} steps computed ({self.skipped} skipped, "
                f"{100.0 * self.skipped / max(n, 1):.0f}% saved)  {self.timeline()}")


_STARTED = itertools.count()


class StatsRecorder:
    """Collects one call's per-step records on the device; ``materialize`` reads them back once, off the hot path.

    ``key`` names the pipeline call (the schedule its timesteps are views of, or None) and ``started`` orders the
    recorders of several transformers (Wan 2.2's experts), so that one pipeline call's records can be merged.
    ``steps`` holds one ``(t, scores, threshold, forced, computed)`` per step (what ``record`` appends), ``stack_calls``
    one entry per context's transformer call, and ``rows`` the eager decision's score table (``score_rows``)."""

    def __init__(self, num_steps: int, key: object = None) -> None:
        self.num_steps = num_steps
        self.key = key
        self.started = next(_STARTED)
        # one entry per context's transformer call: whether it ran the block stack (a bool, or a flag snapshot)
        self.stack_calls: list[bool | torch.Tensor] = []
        self.steps: list[tuple[torch.Tensor, torch.Tensor, float, bool, bool | torch.Tensor]] = []
        self.rows: tuple[torch.Tensor, ...] | None = None

    def score_rows(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Where a decision taken on the host's side of the step (eager) writes the per-sample scores: one row per step
        of this call's score table, made like ``like`` (the state's ``[B]`` score buffer) on the first step, so that
        recording them copies nothing."""
        if self.rows is None:
            self.rows = torch.empty((self.num_steps, *like.shape), dtype=like.dtype, device=like.device).unbind(0)
        return self.rows

    def record(self, t: torch.Tensor, score: torch.Tensor, threshold: float, forced: bool,
               computed: bool | torch.Tensor) -> None:
        """Keep this step's per-sample timesteps and scores (tensors that nothing writes to afterwards: the caller
        hands copies) and its decision: a bool, or a snapshot of the device flag kept unchanged (no sync)."""
        self.steps.append((t, score, threshold, forced, computed))

    @staticmethod
    def _computed(values: list[bool | torch.Tensor]) -> list[bool]:
        flags = [v for v in values if isinstance(v, torch.Tensor)]
        read = iter((torch.stack(flags).cpu() & COMPUTE).ne(0).tolist() if flags else [])
        return [next(read) if isinstance(v, torch.Tensor) else v for v in values]

    def materialize(self) -> CallStats:
        """The call's statistics as plain Python values (one device-to-host copy)."""
        stats = CallStats(num_steps=self.num_steps, block_stack_calls=sum(self._computed(self.stack_calls)))
        if not self.steps:
            return stats
        ts = torch.cat([s[0][:1] for s in self.steps]).double().cpu().tolist()
        scores = torch.stack([s[1] for s in self.steps]).double().cpu()
        scores = torch.where(torch.isfinite(scores), scores, float("nan")).tolist()
        stats.timesteps = ts
        stats.scores = scores
        stats.thresholds = [s[2] for s in self.steps]
        stats.forced = [s[3] for s in self.steps]
        stats.computed = self._computed([s[4] for s in self.steps])
        return stats


def group_calls(histories: list[list[StatsRecorder]]) -> list[list[StatsRecorder]]:
    """The pipeline calls of one or more transformers' histories, in order: recorders of different transformers
    that follow each other with the same (non-None) key are one call."""
    tagged = sorted(((r.started, i, r) for i, h in enumerate(histories) for r in h), key=lambda e: e[0])
    calls: list[list[tuple[int, StatsRecorder]]] = []
    for _, i, r in tagged:
        last = calls[-1] if calls else None
        if last and r.key is not None and r.key is last[-1][1].key and i not in {j for j, _ in last}:
            last.append((i, r))
        else:
            calls.append([(i, r)])
    return [[r for _, r in call] for call in calls]


def merge(recorders: list[StatsRecorder]) -> CallStats:
    """One pipeline call's statistics from the recorders of its transformers, in the order they ran."""
    parts = [r.materialize() for r in recorders]
    stats = CallStats(num_steps=parts[0].num_steps, block_stack_calls=sum(p.block_stack_calls for p in parts))
    for p in parts:
        for name in ("timesteps", "computed", "forced", "thresholds", "scores"):
            getattr(stats, name).extend(getattr(p, name))
    return stats
