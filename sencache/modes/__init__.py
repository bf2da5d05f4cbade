"""Execution modes: one executor per mode behind one small interface, and ``auto`` as an ordered fallback chain.

An executor runs one transformer call of a denoising step with the block stack cached:
``executor(ctx, step, args, kwargs)``, where ``step`` is the leading context's :class:`~sencache.clock.Step` (None
for a following context) and ``ctx`` the calling context's cache. While the transformer runs, the block stack asks
a ``Head`` for its output, ``head.replace_stack(carried, args, kwargs)``: the executor itself in eager and compiled
mode, the capture being built in graph mode (a replay runs no Python). The modes, fastest first:

- ``graph`` (:mod:`sencache.modes.graph`): each call replays a CUDA graph with the block stack under a conditional
  IF node set from the device decision flag; no host sync.
- ``compiled`` (:mod:`sencache.modes.compiled`): the decision, the skip (``torch.cond``) and the forward in one
  ``torch.compile(fullgraph=True)`` graph.
- ``eager`` (:mod:`sencache.modes.eager`): the fused decision on the device and one host read of its flag.

``auto`` takes graph, else compiled, else eager; an executor that turns out unavailable raises
:class:`Unavailable` before it changed any state, and the hook moves on to the next one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sencache.stack import Carried, Residual

if TYPE_CHECKING:
    from sencache.clock import Step
    from sencache.hooks import SenCacheHook

MODES = ("eager", "compiled", "graph", "auto")


class Unavailable(RuntimeError):
    """This mode cannot run here; the message says why (the hook falls back to the next mode)."""


@dataclass
class Context:
    """What one CFG context (e.g. "cond") caches: its residual, and in graph mode its captured calls."""

    residual: Residual = field(default_factory=Residual)
    captures: OrderedDict = field(default_factory=OrderedDict)

    def residuals(self) -> list[torch.Tensor]:
        """The tensors this context's residual cache holds now (graph mode: each captured call's body has its own)."""
        sets = [self.residual.tensors, getattr(self.residual, "previous", None),  # (LinearResidual: two)
                *(cap.body.residual.tensors for cap in self.captures.values())]
        return [r for tensors in sets if tensors is not None for r in tensors if r is not None]


class Executor:
    """One execution mode (see the module docstring)."""

    name = ""

    def __init__(self, hook: SenCacheHook) -> None:
        self.hook = hook

    def __call__(self, ctx: Context, step: Step | None, args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError

    def replace_stack(self, carried: Carried, args: tuple, kwargs: dict) -> Carried:
        """The block stack's output for its input ``carried`` (called by the head block)."""
        raise NotImplementedError

    def end_call(self, contexts: dict[str, Context]) -> None:
        """The pipeline call ended (memory that is not reused may go)."""

    @staticmethod
    def device_inputs(step: Step | None) -> tuple | None:
        """The decision's inputs in the device modes: the step's tolerance and forcing go into the state's buffers
        (two fills, no sync) and ``(t, Jx, Jt)`` become arguments of ``device_step``. None for a following context."""
        if step is None:
            return None
        step.state.set_inputs(step.eps, step.forced)
        return step.t, step.jx, step.jt

    def record_on_device(self, step: Step | None, must_compute: bool) -> None:
        """The statistics of a call whose decision stayed on the device (a snapshot of the flag, read later)."""
        clock = self.hook.clock
        if step is not None:
            clock.record(step, step.state.flag)
        clock.count_stack_call(True if must_compute else clock.flag)

    def device_step(self, decide_inputs: tuple | None, args: tuple, kwargs: dict, state: Any = None) -> Any:
        """The step of the compiled and graph modes: the decision and reference update of ``state`` (default: the
        clock's; leading context only), then the transformer's forward."""
        hook = self.hook
        if decide_inputs is not None:
            (hook.clock.state if state is None else state).step(hook.latent(args, kwargs), *decide_inputs,
                                                                hook.config.max_consecutive_skips)
        return hook.fn_ref.original_forward(*args, **kwargs)


def build_chain(hook: SenCacheHook, mode: str, x: torch.Tensor, compile_options: dict | None) -> list[Executor]:
    """The executors to try for ``mode``, in order, given the first latent ``x``."""
    from sencache.modes.compiled import CompiledExecutor
    from sencache.modes.eager import EagerExecutor
    from sencache.modes.graph import GraphExecutor

    if mode == "eager":
        return [EagerExecutor(hook)]
    if hook.config.forecast != "reuse":  # graph or auto (apply_sencache refuses compiled)
        hook.fall_back(f"forecast={hook.config.forecast!r} runs in eager mode only", "eager")
        return [EagerExecutor(hook)]
    if mode == "compiled":
        return [CompiledExecutor(hook, compile_options, fallible=False)]
    if mode == "graph":
        return [GraphExecutor(hook), EagerExecutor(hook)]
    if x.device.type != "cuda":  # auto off CUDA
        hook.fall_back(f"the latent is on {x.device}, where eager mode has no host sync or launch cost to remove",
                       "eager")
        return [EagerExecutor(hook)]
    return [GraphExecutor(hook), CompiledExecutor(hook, compile_options, fallible=True), EagerExecutor(hook)]
