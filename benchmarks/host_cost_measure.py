"""The measured side of ``benchmarks/host_cost.py``: the four methods on a tiny Wan pipeline, the probe that clocks
a pipeline call's steps, the checks that no method skipped, and the interleaved rounds."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig

import sencache
from sencache.offline_pipelines import build_pipeline, call_kwargs

METHODS = ("uncached", "SenCache", "FirstBlockCache", "MagCache")
BASELINE = "uncached"
# Per call, on the wall clock (``*_us``) and in thread CPU time (``*_cpu_us``): the median and the mean of the
# steady steps' tick intervals, the median time inside a step's two transformer calls, and the whole pipeline call
# divided by its steps (all in µs).
FIGURES = tuple(f.format(c) for c in ("us", "cpu_us")
                for f in ("step_{}", "step_{}_mean", "transformer_{}", "call_{}_per_step"))
# The headline figure: thread CPU time is host work without the waits for a core on a shared machine.
PRIMARY = "step_cpu_us"
# 16x16 pixels, 1 frame: a latent of 16 x 1 x 2 x 2, one token after Wan's 1x2x2 patches; the blocks cost little.
GEOMETRY = {"height": 16, "width": 16, "num_frames": 1}
# Around the measured calls (``--grad-mode``): no_grad is what the pipelines' ``__call__`` sets itself.
GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def flat_profile(transformer: torch.nn.Module) -> sencache.SensitivityProfile:
    """A profile with the same sensitivities at every timestep (no calibration needed; eps=0 never skips anyway)."""
    ts = torch.linspace(1000.0, 0.0, 11)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.full_like(ts, 0.5), jt=torch.full_like(ts, 2e-3),
                                       metadata={"transformer_class": type(transformer).__name__})


class Probe:
    """Clocks of one pipeline call: step-end callback ticks, the transformer calls, and the last block's runs.

    Every event reads two clocks: the wall clock (``perf_counter_ns``) and this thread's CPU time
    (``thread_time_ns``), which does not advance while the thread waits for a core another process holds.
    """

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.clear()
        self._entered = (0, 0)
        transformer.register_forward_pre_hook(self._enter)
        transformer.register_forward_hook(self._leave)
        # the feed-forward of the last block runs only when the block stack is computed, whatever the cache
        transformer.blocks[-1].ffn.register_forward_hook(self._block_ran)

    def clear(self) -> None:
        self.ticks: list[tuple[int, int]] = []
        self.calls: list[tuple[int, int]] = []
        self.block_runs = 0

    @staticmethod
    def now() -> tuple[int, int]:
        return time.perf_counter_ns(), time.thread_time_ns()

    def _enter(self, module: torch.nn.Module, args: tuple) -> None:
        self._entered = self.now()

    def _leave(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        wall, cpu = self.now()
        self.calls.append((wall - self._entered[0], cpu - self._entered[1]))

    def _block_ran(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.block_runs += 1

    def tick(self, pipe: Any, step: int, t: Any, callback_kwargs: dict) -> dict:
        self.ticks.append(self.now())
        return callback_kwargs


def build(method: str, steps: int, layers: int, seed: int = 0) -> tuple[Any, Probe]:
    """A tiny Wan pipeline with ``method`` applied, and its probe."""
    pipe = build_pipeline("wan", seed=seed, num_layers=layers)
    tr = pipe.transformer
    tr.requires_grad_(False)
    if method == "SenCache":
        sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(tr), eps=0.0, eps_start=0.0),
                                mode="eager")
    elif method == "FirstBlockCache":
        tr.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    elif method == "MagCache":
        tr.enable_cache(MagCacheConfig(threshold=0.0, num_inference_steps=steps, mag_ratios=[2.0] * steps))
    elif method != BASELINE:
        raise ValueError(f"unknown method {method!r}; one of {METHODS}")
    return pipe, Probe(tr)


def run_call(method: str, pipe: Any, probe: Probe, kwargs: dict, steps: int) -> dict[str, float]:
    """One pipeline call of ``method``; its steady-state step time and the checks that nothing was skipped."""
    probe.clear()
    kwargs = {**kwargs, "generator": torch.Generator().manual_seed(0)}
    start = probe.now()
    pipe(**kwargs, callback_on_step_end=probe.tick)
    end = probe.now()
    if len(probe.ticks) != steps or len(probe.calls) != 2 * steps:
        raise RuntimeError(f"{method}: {len(probe.ticks)} step ticks and {len(probe.calls)} transformer calls, "
                           f"expected {steps} and {2 * steps}")
    if probe.block_runs != 2 * steps:
        raise RuntimeError(f"{method}: the last block ran {probe.block_runs} times in {steps} CFG steps, expected "
                           f"{2 * steps}: the cache skipped, so this is not a measure of its bookkeeping")
    computed = steps
    if method == "SenCache":
        stats = sencache.get_stats(pipe)
        computed = stats.nfe
        if stats.nfe != steps or len(stats.computed) != steps or stats.block_stack_calls != 2 * steps:
            raise RuntimeError(f"SenCache at eps=0 skipped: {stats}")
    out: dict[str, float] = {}
    for clock, suffix in ((0, "us"), (1, "cpu_us")):  # wall clock, thread CPU time
        intervals = [(probe.ticks[i][clock] - probe.ticks[i - 1][clock]) / 1e3 for i in range(1, steps)]
        inside = [(probe.calls[2 * i][clock] + probe.calls[2 * i + 1][clock]) / 1e3 for i in range(1, steps)]
        out[f"step_{suffix}"] = statistics.median(intervals)
        out[f"step_{suffix}_mean"] = statistics.fmean(intervals)
        out[f"transformer_{suffix}"] = statistics.median(inside)
        out[f"call_{suffix}_per_step"] = (end[clock] - start[clock]) / steps / 1e3
    out = {k: round(v, 3) for k, v in out.items()}  # ns resolution: the clocks count whole nanoseconds
    return {**out, "computed_steps": computed, "last_block_runs": probe.block_runs}


def measure(rounds: int, steps: int, warmup: int = 3, layers: int = 2, grad_mode: str = "no_grad",
            methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    """Interleaved rounds: per round, one call of every method (order rotated by one each round).

    Returns ``{"order": [...per round], "raw": {method: {figure: [...per round]}}}``.
    """
    if steps < 2:
        raise ValueError("steps must be >= 2 (a step is the interval between two step-end ticks)")
    if BASELINE not in methods:
        raise ValueError(f"methods must include the baseline {BASELINE!r}")
    built = {m: build(m, steps, layers) for m in methods}
    kwargs = call_kwargs("wan", built[BASELINE][0], num_inference_steps=steps, output_type="latent", **GEOMETRY)
    raw: dict[str, dict[str, list]] = {m: {} for m in methods}
    order_log = []
    with GRAD_MODES[grad_mode]():
        for r in range(-warmup, rounds):
            k = r % len(methods)
            order = methods[k:] + methods[:k]
            results = {m: run_call(m, *built[m], kwargs, steps) for m in order}
            if r < 0:
                continue
            order_log.append(list(order))
            for m, res in results.items():
                for key, value in res.items():
                    raw[m].setdefault(key, []).append(value)
    return {"order": order_log, "raw": raw}
