"""Host cost per denoising step of SenCache (eager, eps=0) against diffusers' FirstBlockCache and MagCache, on a
minimal Wan transformer on the CPU: ``python benchmarks/host_cost.py`` (about 3 minutes on the 2-core dev CPU).

What is measured. A tiny ``WanPipeline`` (``sencache.offline_pipelines``, 2 blocks of width 24, one latent token)
runs with CFG on, so every denoising step is a "cond" and an "uncond" transformer call, exactly as on Wan 2.1. The
transformer is so small that a step is almost all host work: Python, the diffusers hook machinery, torch op dispatch.
Four copies of the pipeline (same weights) carry one method each, applied once:

- ``uncached``: the plain pipeline, the baseline;
- ``SenCache``: ``sencache.apply_sencache(pipe, SenCacheConfig(profile=<flat profile>, eps=0, eps_start=0))`` in
  eager mode. At eps=0 no step can be skipped; ``sencache.get_stats`` is checked after every call;
- ``FirstBlockCache``: ``transformer.enable_cache(FirstBlockCacheConfig(threshold=0))``, which never skips;
- ``MagCache``: ``MagCacheConfig(threshold=0, mag_ratios=[2] * steps)``: its accumulated error is at least 1 after
  any step, above the threshold, so it never skips.

Every call of every method is checked to have run the last block's feed-forward ``2 * steps`` times (a forward hook
on it counts its calls), so no method ever skipped, and all of them do the same block work.

How. A step's time is the interval between two ``callback_on_step_end`` ticks, the pipeline's own per-step
callback, and a call's figure is the median of its steps 2..N. That is the steady-state step: it leaves out the
set-up before the loop, the first step (a pipeline call's one-time bookkeeping: new-call detection, state
allocation) and the end of the call (the hooks' ``reset_state``), and the median drops the steps in which another
process took the core. It includes everything a method adds to a step, also what lies outside the transformer's
forward: diffusers' ``cache_context`` walks every hook registry under the transformer on entry and exit, which costs
more with hooks on the blocks. The rest of a step (scheduler step, CFG combination, the blocks' own compute) is the
same work for every method and cancels in the paired differences. Each interval is read on two clocks: the wall
clock and this thread's CPU time (``time.thread_time_ns``). With one torch thread all the work runs on this thread,
so on an idle machine the two agree; on a shared one the CPU time leaves out the waits for a core, and it is the
headline figure (``PRIMARY``). Secondary figures per call: the mean step, the time inside the step's two transformer
calls (forward pre/post hooks on the transformer, around diffusers' hooks), and the whole pipeline call
(``output_type="latent"``: no VAE) per step.

The methods run interleaved in one process: each round calls every method once, in an order rotated by one every
round, after a few warm-up rounds. A slow drift of the machine (other processes, clock changes) then hits all methods
alike. Per method the record gives the median step time; per round, each method's step time minus the uncached one
of the same round (the paired overhead), summarised as median, quartiles and 5-95% range; and the SenCache /
FirstBlockCache ratio of the median paired overheads, with a bootstrap 95% interval over rounds.

``--profile N`` adds a cProfile of N SenCache calls: the time per step of its own functions (the decision, the
profile lookup, the statistics, the block hooks) and of diffusers' hook machinery. cProfile adds its own cost to
every Python call, so these figures are larger than the real ones; their proportions guide optimisation.

Outputs: a JSON record (CPU, torch threads, library versions, date, command, settings, per-round raw numbers,
summaries) and a markdown table next to it (``--out``, default ``benchmarks/results/host_cost_cpu.json``).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import inspect
import json
import math
import os
import platform
import pstats
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
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
DEFAULT_OUT = Path("benchmarks/results/host_cost_cpu.json")
# 16x16 pixels, 1 frame: a latent of 16 x 1 x 2 x 2, one token after Wan's 1x2x2 patches; the blocks cost little.
GEOMETRY = {"height": 16, "width": 16, "num_frames": 1}


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where it exists)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """torch, diffusers, Triton and Python versions."""
    import diffusers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    return versions


def source_info() -> dict[str, Any]:
    """Which sencache code ran: its path, and the git commit and uncommitted changes of sencache/ where it is a git
    checkout (None otherwise)."""
    root = Path(sencache.__file__).resolve().parents[1]
    info: dict[str, Any] = {"sencache_path": str(Path(sencache.__file__).resolve().parent), "git_commit": None,
                            "git_changed": None}
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            changed = subprocess.run([*git, "status", "--porcelain", "--", "sencache", "sencache_kernels"],
                                     capture_output=True, text=True, timeout=10)
            info["git_changed"] = changed.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


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


def quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of ``values`` (linear interpolation between order statistics)."""
    s = sorted(values)
    pos = p * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and 5th/95th percentiles."""
    out: dict[str, float] = {name: quantile(values, p) for name, p in
                             (("median", 0.5), ("p25", 0.25), ("p75", 0.75), ("p5", 0.05), ("p95", 0.95))}
    out["n"] = len(values)
    return out


def ratio_of_medians(num: list[float], den: list[float], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``median(num) / median(den)`` of values paired by round, with a bootstrap 95% interval (rounds resampled)."""
    rng = random.Random(seed)
    n = len(num)
    boot = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        d = statistics.median(den[i] for i in idx)
        if d != 0:
            boot.append(statistics.median(num[i] for i in idx) / d)
    den_median = statistics.median(den)
    return {"ratio": statistics.median(num) / den_median if den_median != 0 else None,
            "ci95": [quantile(boot, 0.025), quantile(boot, 0.975)] if boot else None, "resamples": len(boot)}


GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


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


def paired(raw: dict[str, dict[str, list]], method: str, other: str, key: str) -> list[float]:
    """``method`` minus ``other`` per round, for figure ``key``."""
    return [a - b for a, b in zip(raw[method][key], raw[other][key], strict=True)]


def summarize(raw: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Per method: every figure's spread and, against the baseline, the paired overheads (µs, and relative for
    the step); then SenCache against FirstBlockCache: ratio of the median paired overheads and paired difference."""
    out: dict[str, Any] = {}
    for m, figures in raw.items():
        row: dict[str, Any] = {key: spread(figures[key]) for key in FIGURES}
        row["computed_steps"] = sorted(set(figures["computed_steps"]))
        row["last_block_runs"] = sorted(set(figures["last_block_runs"]))
        if m != BASELINE:
            for key in FIGURES:
                row[f"overhead_{key}"] = spread(paired(raw, m, BASELINE, key))
            for key in ("step_us", "step_cpu_us"):
                row[f"overhead_{key}_fraction"] = spread(
                    [a / b - 1 for a, b in zip(figures[key], raw[BASELINE][key], strict=True)])
        out[m] = row
    if "SenCache" in raw and "FirstBlockCache" in raw:
        out["SenCache_vs_FirstBlockCache"] = {
            key: {"overhead_ratio": ratio_of_medians(paired(raw, "SenCache", BASELINE, key),
                                                     paired(raw, "FirstBlockCache", BASELINE, key)),
                  # the same comparison without the baseline: SenCache minus FirstBlockCache, paired by round
                  "difference_us": spread(paired(raw, "SenCache", "FirstBlockCache", key))}
            for key in ("step_us", "step_cpu_us", "transformer_us", "transformer_cpu_us")}
    return out


# ----------------------------------------------------------------------------------------------- where time goes
# Functions picked out of the profile: (label, "module:Qualified.name") resolved by import to the profiled code, or
# (label, "file suffix|function name") matched by name for functions no import reaches (diffusers' hook wrapper).
# A name that no longer exists (after a refactor) is reported as not found.
PROFILE_ITEMS: tuple[tuple[str, str], ...] = (
    ("SenCache transformer hook `_forward` (incl. the model's forward)", "sencache.hooks:SenCacheHook._forward"),
    ("SenCache `_start_step` (step clock)", "sencache.hooks:SenCacheHook._start_step"),
    ("SenCache `_decide_eager` (lookup + decision + flag read + record)", "sencache.hooks:SenCacheHook._decide_eager"),
    ("SensitivityProfile.lookup", "sencache.profile:SensitivityProfile.lookup"),
    ("DecisionState.decide (decide + commit ops)", "sencache_kernels.state:DecisionState.decide"),
    ("DecisionState.read_flag", "sencache_kernels.state:DecisionState.read_flag"),
    ("StatsRecorder.record", "sencache.stats:StatsRecorder.record"),
    ("StatsRecorder.count_stack_call", "sencache.stats:StatsRecorder.count_stack_call"),
    ("SenCache block hook `new_forward` (incl. the blocks)", "sencache.hooks:SenCacheBlockHook.new_forward"),
    # the same roles after the refactor into a step clock, a block stack and one executor per mode (commit 2a64a1a)
    ("SenCache `StepClock.tick` (step clock)", "sencache.clock:StepClock.tick"),
    ("SenCache `StepClock.record` (statistics)", "sencache.clock:StepClock.record"),
    ("SenCache `EagerExecutor.__call__` (incl. the model's forward)", "sencache.modes.eager:EagerExecutor.__call__"),
    ("SenCache `BlockStack.run` (the blocks, from the head)", "sencache.stack:BlockStack.run"),
    ("SenCache block hook `_BlockHook.new_forward` (incl. the blocks)", "sencache.stack:_BlockHook.new_forward"),
    ("sencache `Args.replace` (argument plumbing)", "sencache.plumbing:Args.replace"),
    ("diffusers hook wrapper `new_forward` (registry)", "diffusers/hooks/hooks.py|new_forward"),
    ("diffusers `_set_cache_context`", "diffusers.hooks.hooks:_set_cache_context"),
    ("diffusers `cache_context` (cond + uncond)", "diffusers.models.cache_utils:CacheMixin.cache_context"),
    ("Wan transformer forward (model)", "diffusers.models.transformers.transformer_wan:WanTransformer3DModel.forward"),
    ("Wan block forward (model)", "diffusers.models.transformers.transformer_wan:WanTransformerBlock.forward"),
)
# Derived rows: (label, minuend item, subtrahend item), cumulative times.
PROFILE_DERIVED: tuple[tuple[str, str, str], ...] = (
    ("SenCache transformer hook, without the model's forward", "SenCache transformer hook `_forward` (incl. the "
     "model's forward)", "Wan transformer forward (model)"),
    ("SenCache block hooks, without the blocks", "SenCache block hook `new_forward` (incl. the blocks)",
     "Wan block forward (model)"),
)


def _function_table(prof: cProfile.Profile, per: int) -> dict[tuple, dict[str, float]]:
    """pstats key ``(file, line, function)`` -> calls, tottime and cumtime per ``per`` (µs), from a profile."""
    return {key: {"calls": ncalls / per, "tottime_us": 1e6 * tottime / per, "cumtime_us": 1e6 * cumtime / per}
            for key, (_, ncalls, tottime, cumtime, _) in pstats.Stats(prof).stats.items()}


def _key_name(key: tuple) -> str:
    path, line, func = key
    return func if path == "~" else f"{'/'.join(Path(path).parts[-3:])}:{line}({func})"


def _matches(spec: str) -> Any:
    """A predicate on pstats keys for one ``PROFILE_ITEMS`` entry, or None when its function does not exist."""
    if "|" in spec:
        suffix, name = spec.split("|")
        return lambda key: key[2] == name and key[0].endswith(suffix)
    module, _, qualname = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    code = getattr(inspect.unwrap(obj), "__code__", None)
    if code is None:
        return None
    where = (code.co_filename, code.co_firstlineno, code.co_name)
    return lambda key: key == where


def profile_methods(calls: int, steps: int, layers: int = 2, top: int = 25) -> dict[str, Any]:
    """cProfile of ``calls`` pipeline calls of uncached and of SenCache, each call profiled on its own; per
    function, the median over the calls of its time per denoising step (µs).

    Returns the functions of ``PROFILE_ITEMS`` in the SenCache profile, the ``PROFILE_DERIVED`` differences, and the
    ``top`` functions SenCache calls more often than the uncached pipeline, by the own time of the extra calls.
    """
    built = {m: build(m, steps, layers) for m in (BASELINE, "SenCache")}
    kwargs = call_kwargs("wan", built[BASELINE][0], num_inference_steps=steps, output_type="latent", **GEOMETRY)
    runs: dict[str, list[dict[tuple, dict[str, float]]]] = {m: [] for m in built}
    totals: dict[str, list[float]] = {m: [] for m in built}
    with torch.inference_mode():
        for method, (pipe, probe) in built.items():
            run_call(method, pipe, probe, kwargs, steps)  # warm-up (and the checks)
        for _ in range(calls):  # one call per profile, the methods alternating
            for method, (pipe, _) in built.items():
                prof = cProfile.Profile()
                start = time.perf_counter()
                prof.enable()
                pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)})
                prof.disable()
                totals[method].append(1e6 * (time.perf_counter() - start) / steps)
                runs[method].append(_function_table(prof, steps))
    # Per function, the median over the profiled calls: a call in which another process took the core inflates
    # whichever functions it hit, the median drops it.
    tables = {m: {key: {f: statistics.median(t[key][f] if key in t else 0.0 for t in tables_m)
                        for f in ("calls", "tottime_us", "cumtime_us")}
                  for key in set().union(*tables_m)} for m, tables_m in runs.items()}
    totals = {m: statistics.median(v) for m, v in totals.items()}
    sen, unc = tables["SenCache"], tables[BASELINE]
    selected: dict[str, dict[str, Any]] = {}
    hits: dict[str, list[tuple]] = {}
    for label, spec in PROFILE_ITEMS:
        match = _matches(spec)
        hits[label] = [k for k in sen if match is not None and match(k)]
        selected[label] = {"found": bool(hits[label]), "functions": [_key_name(k) for k in hits[label]],
                           **{f: sum(sen[k][f] for k in hits[label]) for f in ("calls", "tottime_us", "cumtime_us")}}

    def cumtime(table: dict[tuple, dict[str, float]], label: str) -> float:
        return sum(table[k]["cumtime_us"] for k in hits[label] if k in table)

    for label, plus, minus in PROFILE_DERIVED:
        if selected[plus]["found"] and selected[minus]["found"]:  # the difference in each call, then the median
            diff = statistics.median(cumtime(t, plus) - cumtime(t, minus) for t in runs["SenCache"])
            selected[label] = {"found": True, "functions": [], "calls": selected[plus]["calls"], "tottime_us": None,
                               "cumtime_us": diff}
    # What SenCache adds: functions it calls more often than the uncached pipeline (its own code, extra torch ops,
    # hook machinery), at their per-call own time in the SenCache profile. Functions called equally often in both
    # (the model's own work) are left out: their differences are noise.
    added = []
    for key, v in sen.items():
        extra = v["calls"] - (unc[key]["calls"] if key in unc else 0.0)
        if extra > 0:
            added.append({"function": _key_name(key), "added_own_us": extra * v["tottime_us"] / v["calls"],
                          "cumtime_us": v["cumtime_us"], "calls_sencache": v["calls"],
                          "calls_uncached": unc[key]["calls"] if key in unc else 0.0})
    added.sort(key=lambda a: -a["added_own_us"])
    return {"calls": calls, "steps": steps, "profiled_us_per_step": totals, "selected": selected,
            "top_added": added[:top],
            "note": "cProfile adds its own cost to every Python call: absolute figures are inflated, proportions "
                    "are the guide. cumtime includes callees; the whole pipeline call is profiled (per-call costs "
                    "are spread over its steps); per function, the median over the profiled calls."}


def _timeit(fn: Any, number: int, repeat: int = 5) -> float:
    """µs per call of ``fn()``: the lowest of ``repeat`` means over ``number`` calls (the least disturbed)."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / number / 1e3)
    return best


def components(steps: int, layers: int = 2, number: int = 2000) -> dict[str, Any]:
    """Isolated timings (µs per call, no profiler) of the pieces of an eager SenCache step, through public APIs:
    the profile lookup, the fused decision with its state update, the host read of the flag, the statistics record,
    and diffusers' ``cache_context`` enter+exit on a transformer with and without SenCache's hooks."""
    from sencache.stats import StatsRecorder
    from sencache_kernels import DecisionState

    pipe, _ = build("SenCache", steps, layers)
    plain, _ = build(BASELINE, steps, layers)
    profile = flat_profile(pipe.transformer)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 1, 2, 2, generator=gen)
    tb = torch.full((1,), 500.0)
    state = DecisionState(x)
    jx, jt = profile.lookup(tb)
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out["SensitivityProfile.lookup"] = _timeit(lambda: profile.lookup(tb, "linear"), number)
        out["DecisionState.decide"] = _timeit(lambda: state.decide(x, tb, jx, jt, 0.0, False, 3), number)
        out["DecisionState.read_flag"] = _timeit(state.read_flag, number)

        def record() -> None:
            rec = StatsRecorder(steps)
            for _ in range(steps):
                rec.record(tb, state.score, 0.0, False, True)

        out["StatsRecorder.record"] = _timeit(record, max(1, number // steps)) / steps

        def enter_exit(tr: torch.nn.Module) -> None:
            with tr.cache_context("cond"):
                pass

        out["cache_context enter+exit, SenCache"] = _timeit(lambda: enter_exit(pipe.transformer), number)
        out["cache_context enter+exit, uncached"] = _timeit(lambda: enter_exit(plain.transformer), number)
    per_step = {"SensitivityProfile.lookup": 1, "DecisionState.decide": 1, "DecisionState.read_flag": 1,
                "StatsRecorder.record": 1, "cache_context enter+exit, SenCache": 2,
                "cache_context enter+exit, uncached": 2}
    return {"us_per_call": out, "calls_per_step": per_step,
            "us_per_step": {k: v * per_step[k] for k, v in out.items()},
            "note": "minimum over 5 repeats of the mean of `number` calls; lookup, decide, read_flag and record are "
                    "called once per step (the deciding 'cond' call), cache_context twice (cond and uncond)."}


# --------------------------------------------------------------------------------------------------- reporting
def _fmt_spread(o: dict[str, float]) -> str:
    return f"{o['median']:+.1f} [{o['p25']:+.1f}, {o['p75']:+.1f}] ({o['p5']:+.1f}, {o['p95']:+.1f})"


def markdown_table(record: dict[str, Any]) -> str:
    """The summary as markdown: per-step times and paired overheads against the uncached step, then the
    SenCache / FirstBlockCache comparison, the isolated pieces and the profile when the record has them."""
    s = record["settings"]
    lines = [f"Host cost per denoising step, tiny Wan ({s['layers']} blocks, {s['tokens']} token, CFG: 2 transformer "
             f"calls per step, {s.get('grad_mode', 'inference_mode')}), {s['rounds']} interleaved rounds of "
             f"{s['steps']} steps, {record['cpu']} ({record['torch_threads']} torch thread), "
             f"torch {record['versions']['torch']}, diffusers "
             f"{record['versions']['diffusers']}, {record['date']}, `{record['command']}`"
             + (f" ({record['label']})" if record.get("label") and record["label"] not in record["command"]
                else "") + ".", "",
             "Medians over rounds; overheads are paired per round (method minus uncached in the same round): median "
             "[quartiles] (5-95%). CPU = the thread's CPU time, wall = the wall clock.", "",
             "| method | step CPU (µs) | overhead CPU (µs) | overhead CPU (%) | step wall (µs) | overhead wall (µs) "
             "| overhead inside the transformer calls, CPU (µs) |",
             "|---|---|---|---|---|---|---|"]
    for m in record["methods"]:
        row = record["summary"][m]
        if m == BASELINE:
            cells = ["baseline"] * 2 + [f"{row['step_us']['median']:.1f}", "baseline", "baseline"]
        else:
            cells = [_fmt_spread(row["overhead_step_cpu_us"]),
                     f"{100 * row['overhead_step_cpu_us_fraction']['median']:+.2f}%",
                     f"{row['step_us']['median']:.1f}", _fmt_spread(row["overhead_step_us"]),
                     f"{row['overhead_transformer_cpu_us']['median']:+.1f}"]
        lines.append(f"| {m} | {row['step_cpu_us']['median']:.1f} | " + " | ".join(cells) + " |")
    cmp = record["summary"].get("SenCache_vs_FirstBlockCache")
    if cmp:
        lines.append("")
        for key, clock in (("step_cpu_us", "CPU"), ("step_us", "wall")):
            r, d = cmp[key]["overhead_ratio"], cmp[key]["difference_us"]
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
            ci = f" (bootstrap 95%: {r['ci95'][0]:.2f} to {r['ci95'][1]:.2f})" if r["ci95"] else ""
            lines.append(f"- SenCache / FirstBlockCache overhead, {clock}: **{ratio}**{ci}; SenCache step minus "
                         f"FirstBlockCache step, paired: {_fmt_spread(d)} µs.")
    comp = record.get("components")
    if comp:
        lines += ["", "Isolated pieces of a SenCache step, timed alone without a profiler:", "",
                  "| piece | µs per call | calls per step | µs per step |", "|---|---|---|---|"]
        for k, v in comp["us_per_call"].items():
            lines.append(f"| {k} | {v:.1f} | {comp['calls_per_step'][k]} | {comp['us_per_step'][k]:.1f} |")
    prof = record.get("profile")
    if prof:
        total = prof["profiled_us_per_step"]
        lines += ["", f"cProfile of {prof['calls']} calls per method, each profiled alone, median per function "
                  f"(inflated by the profiler: a profiled step took {total['SenCache']:.0f} µs with SenCache, "
                  f"{total[BASELINE]:.0f} µs uncached; µs per step):", "",
                  "| item | calls / step | own (µs) | cumulative (µs) |", "|---|---|---|---|"]
        for label, item in prof["selected"].items():
            if not item["found"]:
                continue
            own = "" if item["tottime_us"] is None else f"{item['tottime_us']:.1f}"
            lines.append(f"| {label} | {item['calls']:g} | {own} | {item['cumtime_us']:.1f} |")
        missing = [label for label, item in prof["selected"].items() if not item["found"]]
        if missing:
            lines += ["", "Not in this code: " + "; ".join(missing) + "."]
        lines += ["", "Functions SenCache calls more often than the uncached pipeline, by the own time of the extra "
                  "calls (µs per step, profiled):", "",
                  "| function | added own time | cumulative | calls / step (SenCache, uncached) |", "|---|---|---|---|"]
        for a in prof["top_added"][:15]:
            lines.append(f"| `{a['function']}` | {a['added_own_us']:.1f} | {a['cumtime_us']:.1f} | "
                         f"{a['calls_sencache']:g}, {a['calls_uncached']:g} |")
    return "\n".join(lines) + "\n"


def dumps(record: dict[str, Any]) -> str:
    """JSON with one key per line, but each list of plain values (the per-round numbers) on one line."""
    text = json.dumps(record, indent=1)
    flat = re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]",
                  lambda m: "[" + " ".join(line.strip() for line in m.group(1).splitlines()) + "]", text)
    return flat if json.loads(flat) == record else text


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes on the machine add noise), where the OS has them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(out: Path, rounds: int, steps: int, warmup: int = 3, layers: int = 2, threads: int = 1,
        profile_calls: int = 0, command: str | None = None, label: str = "",
        component_calls: int = 2000, grad_mode: str = "no_grad") -> dict[str, Any]:
    """Measure, summarise, and write ``out`` (JSON) and ``out.with_suffix('.md')``; returns the record.

    Args:
        out: the JSON record's path; the markdown table goes next to it (``.md``).
        rounds: interleaved rounds (one call of every method each), after ``warmup`` untimed ones.
        steps: denoising steps per pipeline call (>= 2).
        layers: transformer blocks of the tiny Wan.
        threads: torch intra-op threads while measuring (restored afterwards).
        profile_calls: pipeline calls to cProfile per method, and time SenCache's pieces (0: neither).
        command: the command line to store; label: free text to store.
        component_calls: calls per timing of each isolated piece.
        grad_mode: ``"no_grad"`` (what the pipelines' ``__call__`` sets itself) or ``"inference_mode"`` around the
            calls. SenCache's step clock reads a step's Jx, Jt from a per-call table only outside inference mode
            (inference tensors have no version counter), so the two differ for SenCache.
    """
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, rounds, steps, warmup, layers, profile_calls, command, label, component_calls, grad_mode)
    finally:
        torch.set_num_threads(saved_threads)


def _run(out: Path, rounds: int, steps: int, warmup: int, layers: int, profile_calls: int, command: str | None,
         label: str, component_calls: int, grad_mode: str) -> dict[str, Any]:
    started = time.time()
    load_before = _load()
    measured = measure(rounds, steps, warmup, layers, grad_mode)
    record: dict[str, Any] = {
        "benchmark": "host cost per denoising step",
        "cpu": cpu_name(), "device": "cpu", "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(), "sencache": sencache.__version__, "source": source_info(),
        "label": label,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command or f"python benchmarks/host_cost.py --rounds {rounds} --steps {steps}",
        "methods": list(METHODS), "baseline": BASELINE, "primary": PRIMARY,
        "load_average": {"before": load_before, "after_rounds": _load()},
        "settings": {"rounds": rounds, "warmup_rounds": warmup, "steps": steps, "layers": layers, "cfg": True,
                     "transformer_calls_per_step": 2, "tokens": 1, "geometry": GEOMETRY,
                     "grad_mode": grad_mode,
                     "latent": [1, 16, 1, 2, 2], "dtype": "float32",
                     "sencache": "eager, eps=0, eps_start=0, flat profile",
                     "first_block_cache": "threshold=0", "mag_cache": f"threshold=0, mag_ratios=[2.0]*{steps}",
                     "figures": {
                         "step_us": "median over steps 2..N of the interval between callback_on_step_end ticks",
                         "step_us_mean": "(last - first callback_on_step_end tick) / (steps - 1)",
                         "transformer_us": "median over steps 2..N of the time inside the step's two transformer "
                                           "calls",
                         "call_us_per_step": "whole pipeline call (output_type='latent') / steps",
                         "*_cpu_us*": "the same in this thread's CPU time (thread_time_ns) instead of the wall clock"}},
        "order": measured["order"], "raw": measured["raw"], "summary": summarize(measured["raw"]),
    }
    if profile_calls:
        record["components"] = components(steps, layers, component_calls)
        record["profile"] = profile_methods(profile_calls, steps, layers)
    record["wall_s"] = time.time() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(record) + "\n")
    out.with_suffix(".md").write_text(markdown_table(record))
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python benchmarks/host_cost.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON record (a .md table goes next to it)")
    parser.add_argument("--rounds", type=int, default=400, help="interleaved rounds (one call per method each)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per pipeline call")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--profile", type=int, default=8, metavar="N",
                        help="also cProfile N calls of SenCache and uncached, and time SenCache's pieces (0: off)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the markdown table next to this record from it (no measurement)")
    parser.add_argument("--label", default="", help="free text stored in the record (e.g. which code this measures)")
    parser.add_argument("--grad-mode", choices=list(GRAD_MODES), default="no_grad",
                        help="around the calls: no_grad (the pipelines' own) or inference_mode")
    args = parser.parse_args(argv)
    if args.render is not None:
        record = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown_table(record))
        print(markdown_table(record))
        return record
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    command = "python benchmarks/host_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = run(args.out, args.rounds, args.steps, args.warmup, args.layers, args.threads, args.profile,
                 command.strip(), args.label, grad_mode=args.grad_mode)
    print(markdown_table(record))
    return record


if __name__ == "__main__":
    main()
