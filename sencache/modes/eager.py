"""Eager mode: the fused decision runs on the device and its flag is read once on the host; the block stack then
runs (storing ``blocks_out - blocks_in`` as the context's residual) or is skipped (``blocks_in + residual``)."""

from __future__ import annotations

import warnings
from typing import Any

from sencache.modes import Context, Executor
from sencache.stack import Carried
from sencache_kernels import COMPUTE, NONFINITE


class EagerExecutor(Executor):
    name = "eager"

    def __init__(self, hook: Any) -> None:
        super().__init__(hook)
        self.reuse = hook.config.forecast == "reuse"  # a skipped step reuses the residual (else: LinearResidual)

    def __call__(self, ctx: Context, step: Any, args: tuple, kwargs: dict) -> Any:
        hook = self.hook
        self._clock = clock = hook.lane.clock
        if step is not None:
            state, recorder = step.state, clock.recorder
            row = (recorder.rows or recorder.score_rows(state._buffers["score"]))[step.index]  # the step's scores
            flag = state.decide(step.x, step.t, step.jx, step.jt, step.eps, step.forced,
                                hook.config.max_consecutive_skips, row)  # with the one host read of the step
            if flag & NONFINITE and not clock.warned_nonfinite:
                clock.warned_nonfinite = True
                warnings.warn("SenCache: the latent contains NaN or Inf; such steps are always computed, never "
                              "skipped. Check the inputs and the model's dtype.", RuntimeWarning, stacklevel=5)
            clock.compute = compute = bool(flag & COMPUTE)
            recorder.steps.append((step.t, row, step.threshold, step.forced, compute))  # recorder.record, inlined
        self._residual = ctx.residual
        stack = hook.stack
        stack.head = self  # stack.running(self), without a context manager's two calls
        try:
            return hook.fn_ref.original_forward(*args, **kwargs)
        finally:
            stack.head = None

    def replace_stack(self, carried: Carried, args: tuple, kwargs: dict) -> Carried:
        clock, stack, residual = self._clock, self.hook.stack, self._residual
        compute = clock.compute or not residual.valid(clock.call, carried)
        recorder = clock.recorder  # clock.count_stack_call(compute), inlined: every call of every step
        if recorder is not None:
            recorder.stack_calls.append(compute)
        if not compute:
            return stack.skip(carried, residual.tensors if self.reuse else residual.at(clock.step))
        out = stack.run(carried, args, kwargs)
        if self.reuse:  # residual.set(...), inlined
            residual.tensors, residual.call = stack.residual(out, carried), clock.call
        else:  # forecast="linear": a LinearResidual
            residual.push(stack.residual(out, carried), clock.call, clock.step)
        return out

    def end_call(self, contexts: dict[str, Context]) -> None:
        for ctx in contexts.values():  # eager residuals are fresh tensors each step: free them between calls
            ctx.residual.clear()
