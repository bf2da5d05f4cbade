"""Where the time of a SenCache step goes, for ``benchmarks/host_cost.py --profile N``: a cProfile of whole
pipeline calls (SenCache against uncached, per function) and isolated timings of the pieces of an eager step."""

from __future__ import annotations

import cProfile
import importlib
import inspect
import math
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from host_cost_measure import BASELINE, GEOMETRY, GRAD_MODES, build, flat_profile, run_call

from sencache.offline_pipelines import call_kwargs

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


def profile_methods(calls: int, steps: int, layers: int = 2, top: int = 25,
                    grad_mode: str = "no_grad") -> dict[str, Any]:
    """cProfile of ``calls`` pipeline calls of uncached and of SenCache, each call profiled on its own, under
    ``grad_mode`` (as the timed rounds); per function, the median over the calls of its time per denoising step (µs).

    Returns the functions of ``PROFILE_ITEMS`` in the SenCache profile, the ``PROFILE_DERIVED`` differences, and the
    ``top`` functions SenCache calls more often than the uncached pipeline, by the own time of the extra calls.
    """
    built = {m: build(m, steps, layers) for m in (BASELINE, "SenCache")}
    kwargs = call_kwargs("wan", built[BASELINE][0], num_inference_steps=steps, output_type="latent", **GEOMETRY)
    runs: dict[str, list[dict[tuple, dict[str, float]]]] = {m: [] for m in built}
    totals: dict[str, list[float]] = {m: [] for m in built}
    with GRAD_MODES[grad_mode]():  # (it was inference mode whatever the rounds ran under, before 2026-12-03)
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


def components(steps: int, layers: int = 2, number: int = 2000, grad_mode: str = "no_grad") -> dict[str, Any]:
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
    # the lookup runs once per pipeline call for the call's schedule table, except under inference mode (every step)
    per_step = {"SensitivityProfile.lookup": 1 if grad_mode == "inference_mode" else 1 / steps,
                "DecisionState.decide": 1, "DecisionState.read_flag": 1,
                "StatsRecorder.record": 1, "cache_context enter+exit, SenCache": 2,
                "cache_context enter+exit, uncached": 2}
    return {"us_per_call": out, "calls_per_step": per_step,
            "us_per_step": {k: v * per_step[k] for k, v in out.items()},
            "note": "minimum over 5 repeats of the mean of `number` calls; decide, read_flag and record are called "
                    "once per step (the deciding 'cond' call), the lookup once per pipeline call (outside inference "
                    "mode), cache_context twice (cond and uncond)."}
