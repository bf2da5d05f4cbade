"""The pieces of a step timed in place, for ``benchmarks/host_cost.py --profile N``: each piece of SenCache's eager
step (and FirstBlockCache's head-block check, and diffusers' ``cache_context``) is wrapped with a clock while real
pipeline calls run, so that it is timed with the caches, branch predictors and allocator in the state the model's
own work leaves them in. Timed alone in a loop (``host_cost_profile.components``) the same piece runs hot and costs
several times less: a decision op that takes about 9 µs in a loop takes about 60 µs between two steps of the model.
The wrappers add a clock read and a Python call to each piece; the figures are per piece, not a sum to compare with
the step's overhead.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from typing import Any

import torch
from host_cost_measure import BASELINE, GEOMETRY, GRAD_MODES, build, run_call
from host_cost_profile import _timeit

import sencache_kernels.state as kernel_state
from sencache.hooks import _hook
from sencache.offline_pipelines import call_kwargs

METHODS = (BASELINE, "SenCache", "FirstBlockCache")


def in_situ(steps: int, layers: int = 2, calls: int = 20, grad_mode: str = "no_grad") -> dict[str, Any]:
    """µs per call of each piece inside ``calls`` pipeline calls per method (interleaved), steps 2..N only (the
    first step's one-time bookkeeping left out, as in the step figures), and how many times per step it ran."""
    built = {m: build(m, steps, layers) for m in METHODS}
    kwargs = call_kwargs("wan", built[BASELINE][0], num_inference_steps=steps, output_type="latent", **GEOMETRY)
    samples: dict[tuple[str, str], list[int]] = defaultdict(list)
    with GRAD_MODES[grad_mode]():
        for m in METHODS:  # one call each first: SenCache's decision state exists after its first call
            run_call(m, *built[m], kwargs, steps)
        undo = [_instrument(m, *built[m], samples) for m in METHODS]
        try:
            for r in range(calls):
                for m in METHODS[r % 3:] + METHODS[:r % 3]:
                    run_call(m, *built[m], kwargs, steps)
        finally:
            for u in undo:
                u()
    pieces = {}
    for (method, label), ns in samples.items():
        q1, med, q3 = statistics.quantiles(ns, n=4) if len(ns) > 1 else (ns[0],) * 3
        per_step = len(ns) / (calls * (steps - 1))
        pieces[label] = {"method": method, "median_us": med / 1e3, "quartiles_us": [q1 / 1e3, q3 / 1e3],
                         "calls_per_step": per_step, "us_per_step": med / 1e3 * per_step}
    return {"calls": calls, "steps": steps, "pieces": pieces,
            "note": "wall clock (perf_counter_ns) around each piece inside real pipeline calls, steps 2..N of each "
                    "call; median and quartiles over the piece's calls; calls per step counted, not assumed."}


def _instrument(method: str, pipe: Any, probe: Any, samples: dict) -> Any:
    """Wrap ``method``'s pieces with clocks that record into ``samples`` once the call's first step has ended
    (``probe.ticks``); returns the function that takes the wrappers off."""
    now = time.perf_counter_ns

    def timed(label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = now()
            out = fn(*args, **kwargs)
            if probe.ticks:
                samples[(method, label)].append(now() - start)
            return out
        return wrapper

    tr = pipe.transformer
    context = tr.cache_context

    @contextlib.contextmanager
    def cache_context(*args: Any, **kwargs: Any) -> Any:
        start = now()
        with context(*args, **kwargs):
            entered = now()
            yield
            leaving = now()
        if probe.ticks:
            samples[(method, f"cache_context enter+exit, {method}")].append(entered - start + now() - leaving)

    tr.cache_context = cache_context
    undo = [lambda: delattr(tr, "cache_context")]
    if method == "SenCache":
        hook = _hook(tr)
        clock, stack = hook.lane.clock, hook.stack
        state = clock.state
        enter = clock.enter

        def timed_enter(*args: Any, **kwargs: Any) -> Any:
            start = now()
            out = enter(*args, **kwargs)
            if probe.ticks:  # the leading call starts the step (tick); a following one gets no step
                role = "leading call: the step's tick" if out[1] is not None else "following call"
                samples[(method, f"StepClock.enter, {role}")].append(now() - start)
            return out

        op = kernel_state._DECIDE
        clock.enter = timed_enter
        state.decide = timed("DecisionState.decide (decide op, flag read, x_ref copy)", state.decide)
        stack.residual = timed("BlockStack.residual (out - in)", stack.residual)
        kernel_state._DECIDE = timed("the decide op alone (sencache::decide)", op)

        def restore() -> None:
            for obj, name in ((clock, "enter"), (state, "decide"), (stack, "residual")):
                delattr(obj, name)
            kernel_state._DECIDE = op

        undo.append(restore)
    elif method == "FirstBlockCache":
        head = next(h for h in tr.blocks[0]._diffusers_hook.hooks.values() if type(h).__name__ == "FBCHeadBlockHook")
        label = "FirstBlockCache head-block check (residual change and its host read)"
        head._should_compute_remaining_blocks = timed(label, head._should_compute_remaining_blocks)
        undo.append(lambda: delattr(head, "_should_compute_remaining_blocks"))
    return lambda: [u() for u in undo]


def isolated_decide_us(number: int = 2000) -> float:
    """The decide op timed alone in a loop (the hot figure the in-place one compares with), µs per call."""
    from sencache_kernels import DecisionState

    x = torch.randn(1, 16, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    state = DecisionState(x)
    state.set_inputs(0.0, False)
    b = state._buffers
    t, jx, jt = (torch.full((1,), v) for v in (500.0, 0.5, 2e-3))
    args = (x, t, jx, jt, b["eps"], b["force"], b["x_ref"], b["t_ref"], b["jx_ref"], b["jt_ref"],
            b["skips"], b["flag"], b["score"], b["ticket"], 3)
    op = kernel_state._DECIDE
    return _timeit(lambda: op(*args), number)
