"""Compiled mode: the decision, the reference update and the transformer's forward in one
``torch.compile(fullgraph=True)`` graph with no graph break.

The head block runs the whole stack under ``torch.cond`` on the device flag (compute: every block; skip:
``blocks_in + residual``), ``sencache::commit`` stores the new residual only on computed steps, and the other blocks
pass through. Residuals and the decision state live in buffers with static addresses (``mark_static_address``),
kept across pipeline calls. Inductor runs ``torch.cond`` by reading its predicate on the host (one sync per call, as
in eager mode) and leaves graphs that hold one out of CUDA-graph trees; only graph mode skips without a host read.
The bookkeeping that cannot be on the device (the step clock) stays in Python outside the graph and reaches it as
tensors.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from sencache.modes import Context, Executor, Unavailable
from sencache.stack import Carried, Residual
from sencache_kernels import COMPUTE


class CompiledExecutor(Executor):
    """Args:
    compile_options: extra ``torch.compile`` arguments.
    fallible: under ``mode="auto"``: a failure to compile a signature's first call makes this mode unavailable.
    """

    name = "compiled"

    def __init__(self, hook: Any, compile_options: dict | None, fallible: bool) -> None:
        super().__init__(hook)
        self.fallible = fallible
        # dynamic=False: one static graph per latent shape. With automatic dynamic shapes, a recompilation turns
        # module float attributes such as RMSNorm eps into symbols, which torch.cond cannot guard on.
        self.compile_options = {"dynamic": False, **(compile_options or {})}
        options = self.compile_options.get("options") or {}
        self.cudagraph_trees = bool(options.get("triton.cudagraphs", self.compile_options.get("mode") in (
            "reduce-overhead", "max-autotune")))
        self.compiled: dict[tuple, Any] = {}
        self.residual: Residual | None = None  # the calling context's, while it runs
        self.must_compute = True
        self.pending: Carried | None = None

    def __call__(self, ctx: Context, step: Any, args: tuple, kwargs: dict) -> Any:
        clock = self.hook.clock
        decide_inputs = self.device_inputs(step)
        # No residual of this call yet: the stack runs without a cond, and its residual is adopted afterwards.
        self.residual, self.must_compute = ctx.residual, not ctx.residual.valid(clock.call)
        first = clock.signature not in self.compiled
        try:
            with self.hook.stack.running(self):
                out = self.compiled_step(clock.signature)(decide_inputs, args, kwargs)
        except Exception as exc:
            if not (self.fallible and first):  # the decision has not run when the first compilation fails
                raise
            self.compiled.pop(clock.signature, None)
            raise Unavailable(f"torch.compile failed ({type(exc).__name__}: {exc})") from exc
        if self.cudagraph_trees:  # the next call's replay overwrites this output (CFG reads both)
            out = clone_tensors(out)
        if self.pending is not None:
            self._adopt(ctx.residual)
        ctx.residual.call = clock.call
        self.record_on_device(step, self.must_compute)
        return out

    def compiled_step(self, signature: tuple) -> Any:
        """The compiled step for one latent signature (shape, dtype, device, steps), compiled on first use.

        Each signature gets its own copy of ``device_step``'s code object, so torch.compile's cache (8 entries per
        code object) holds only that signature's variants (leading or following context; first step of a call or
        not) and any number of resolutions, pipelines and applications stay within it.
        """
        fn = self.compiled.get(signature)
        if fn is None:
            f = Executor.device_step
            copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
            fn = torch.compile(types.MethodType(copy, self), fullgraph=True, **self.compile_options)
            self.compiled[signature] = fn
        return fn

    def replace_stack(self, carried: Carried, args: tuple, kwargs: dict) -> Carried:
        """The block stack under ``torch.cond`` on the device flag, then the residual update of a computed step."""
        stack = self.hook.stack
        # The residual is looked at only when it may be used, so that the first step of every call traces (and
        # guards) the same way whether or not buffers exist from an earlier call.
        res = None if self.must_compute else self.residual.tensors
        fits = res is not None and len(res) == len(carried) and all(
            r is None or (r.shape == c.shape and r.dtype == c.dtype) for r, c in zip(res, carried, strict=True))
        if not fits:  # no valid residual yet (first step of a call, or new shapes): compute, adopt it afterwards
            out = stack.run(carried, args, kwargs)
            self.pending = stack.residual(out, carried)
            return out
        n = len(carried)
        live = [i for i, r in enumerate(res) if r is not None]  # streams the stack outputs (SD3 ends without one)
        flag = self.hook.clock.state.flag
        # torch.cond refuses operands that alias each other; CogVideoX's two streams are slices of one tensor, so
        # the (small, text-length) encoder stream goes in as a copy.
        carried = carried[:1] + tuple(c.clone(memory_format=torch.contiguous_format) for c in carried[1:])

        def compute(*ops: torch.Tensor) -> Carried:
            out = stack.run(ops[:n], args, kwargs)
            # torch.cond needs both branches' outputs dense, with the same strides and storage offset: outputs split
            # from one tensor (Flux's single-stream blocks) are views at an offset, so every output is a copy
            return tuple(out[i].clone(memory_format=torch.contiguous_format) for i in live)

        def skip(*ops: torch.Tensor) -> Carried:
            # as dense as the other branch's (HunyuanVideo's hidden stream enters the blocks transposed)
            return tuple((ops[i] + r).contiguous() for i, r in zip(live, ops[n:], strict=True))

        outs = torch.cond((flag & COMPUTE) != 0, compute, skip, carried + tuple(res[i] for i in live))
        out = [None] * n
        for i, o in zip(live, outs, strict=True):
            out[i] = o
        out = tuple(out)
        stack.store_residual(out, carried, res, flag)  # on computed steps only
        return out

    def _adopt(self, residual: Residual) -> None:
        """Move a pending residual into the persistent buffers (reallocated, static, when the shapes changed)."""
        new, self.pending = self.pending, None
        old = residual.tensors
        if old is not None and len(old) == len(new) and all(
                _meta(o) == _meta(n) for o, n in zip(old, new, strict=True)):
            for o, n in zip(old, new, strict=True):
                if o is not None:
                    o.copy_(n)
            return
        residual.tensors = tuple(None if n is None else n.clone() for n in new)
        for r in residual.tensors:
            if r is not None:
                torch._dynamo.mark_static_address(r)


def _meta(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.dtype, t.device)


def clone_tensors(tree: Any) -> Any:
    """``tree`` with every tensor cloned: outputs that a later replay would overwrite, handed out as fresh tensors."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, tree)

