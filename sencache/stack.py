"""The block stack: the transformer's block list, the streams its blocks carry, running it, its residual and the skip.

Every cache here (SenCache in each execution mode, the TeaCache baseline) replaces the same thing: the evaluation of
the block stack inside one transformer call. ``BlockStack`` hooks every block. While a call is ``running(head)``, the
head block hands the stack's input to ``head.replace_stack(carried, args, kwargs)``, which returns the stack's
output (by running the blocks, or by adding a cached residual), and every other block passes its input through.
Outside such a call the blocks run as usual. The stack may span several block lists (Flux's and HunyuanVideo's
dual-stream blocks, then their single-stream blocks): they run or are skipped together. The streams carried from
block to block are ``(hidden,)``, or ``(hidden, encoder)`` for blocks that also update the encoder hidden states;
where each block returns them is diffusers' own block metadata (``TransformerBlockRegistry``), and a stream may end
as None (SD3's last block returns no encoder states).

Arithmetic, the same for every user: ``residual = blocks_out - blocks_in`` on a computed step,
``blocks_out = blocks_in + residual`` on a skipped one (None where the stack's output is None).

Regional compilation (``module.compile()`` of the blocks, diffusers' ``compile_repeated_blocks``), before or after the
stack is attached: the stack takes each block's compiled code for ``run`` and leaves the block's own call eager, so
that the hooks, and whatever stands for the stack, run outside the compiled regions. The compiled code then traces
only the pass-through path, the one an uncached call takes, and graph mode can capture it into its body.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import ModelHook

from sencache import plumbing
from sencache.parallel import register_inside
from sencache_kernels import commit

Carried = tuple[torch.Tensor, ...]


class Head(Protocol):
    """What stands for the block stack during a cached call (an executor of a mode, the TeaCache hook)."""

    def replace_stack(self, carried: Carried, args: tuple, kwargs: dict) -> Carried: ...


class Residual:
    """A context's cached residual and the pipeline call it belongs to: valid only within that call."""

    def __init__(self) -> None:
        self.tensors: Carried | None = None
        self.call = -1

    def valid(self, call: int, carried: Carried | None = None) -> bool:
        """Whether it holds a residual of pipeline call ``call`` (and of the shapes and dtypes of ``carried``)."""
        tensors = self.tensors
        if tensors is None or self.call != call:
            return False
        if carried is None:
            return True
        if len(tensors) != len(carried):
            return False
        for r, c in zip(tensors, carried, strict=True):  # a plain loop: this runs on every call of a step
            if r is not None and (c is None or r.shape != c.shape or r.dtype != c.dtype):
                return False
        return True

    def set(self, tensors: Carried, call: int) -> None:
        self.tensors, self.call = tensors, call

    def clear(self) -> None:
        self.tensors, self.call = None, -1


class LinearResidual(Residual):
    """A residual forecast to first order in the step index (``SenCacheConfig(forecast="linear")``): on a skipped
    step ``s``, ``r1 + (r1 - r0) * (s - s1) / (s1 - s0)`` from the residuals of the last two computed steps ``s0 <
    s1`` of the call; with one computed step so far, that one as it is. Holds two residuals per context."""

    def __init__(self) -> None:
        super().__init__()
        self.previous: Carried | None = None
        self.steps = (-1, -1)  # (s0, s1)

    def push(self, tensors: Carried, call: int, step: int) -> None:
        """The residual of computed step ``step`` of pipeline call ``call``."""
        s1 = self.steps[1]
        if self.call == call and step == s1:  # the step computed again: its residual replaced
            self.tensors = tensors
            return
        self.previous = self.tensors if self.call == call else None
        self.steps = (s1, step)
        self.set(tensors, call)

    def at(self, step: int) -> Carried:
        """The forecast residual at step ``step`` (of the call the residual is valid for)."""
        r1, r0 = self.tensors, self.previous
        if r0 is None:
            return r1
        s0, s1 = self.steps
        w = (step - s1) / (s1 - s0)
        return tuple([None if a is None else a + w * (a - b) for a, b in zip(r1, r0, strict=True)])

    def clear(self) -> None:
        super().clear()
        self.previous, self.steps = None, (-1, -1)


Layout = tuple[int, int | None]  # where a block returns (hidden, encoder) in its output; encoder None: hidden alone


def block_layout(block: torch.nn.Module, layouts: dict[str, Layout] | None = None) -> Layout:
    """Where ``block`` returns its streams: ``layouts[class name]`` where given, else diffusers' block metadata."""
    name = type(block).__name__
    if layouts and name in layouts:
        return layouts[name]
    try:
        meta = TransformerBlockRegistry.get(type(block))
    except ValueError:
        raise ValueError(f"SenCache does not know where {name} returns its hidden states: give the adapter "
                         f"block_outputs={{{name!r}: (hidden_index, encoder_index or None)}}") from None
    return meta.return_hidden_states_index, meta.return_encoder_hidden_states_index


def _codec(layout: Layout) -> tuple[Callable[[Any], tuple], Callable[[tuple], Any]]:
    """``(unpack, pack)`` between a block's output and the carried streams ``(hidden,)`` / ``(hidden, encoder)``."""
    h, e = layout
    if e is None:
        return ((lambda out: (out[h],)) if h else (lambda out: (out,))), (lambda c: c[0])
    if (h, e) == (0, 1):
        return tuple, (lambda c: c)
    return (lambda out: (out[h], out[e])), (lambda c: (c[1], c[0]))


class BlockStack:
    """The block lists of one transformer, hooked so that a cache can replace their evaluation as one stack.

    Args:
        lists: the transformer's block ``ModuleList`` s, in the order its forward runs them (the adapter's
            ``block_lists``); the first block of the first list is the head.
        hook_name: the name the block hooks are registered under.
        layouts: where blocks return their streams, by class name, for classes diffusers has no metadata for.
    """

    def __init__(self, lists: Sequence[torch.nn.ModuleList] | torch.nn.ModuleList, hook_name: str,
                 layouts: dict[str, Layout] | None = None) -> None:
        lists = [lists] if isinstance(lists, torch.nn.ModuleList) else list(lists)
        self.blocks = [block for blocks in lists for block in blocks]
        self.layouts = [block_layout(b, layouts) for b in self.blocks]
        encoder = {e is not None for _, e in self.layouts}
        if len(encoder) != 1:
            raise ValueError("SenCache needs every block of the stack to carry the same streams; "
                             f"{sorted({type(b).__name__ for b in self.blocks})} differ")
        self.carries_encoder = encoder.pop()
        head = type(self.blocks[0]).forward
        self.args = plumbing.Args(head, "hidden_states", "encoder_hidden_states")
        for block in self.blocks[1:]:  # every block is run with the head block's arguments: the streams must sit
            other = plumbing.Args(type(block).forward, "hidden_states", "encoder_hidden_states")  # where its are
            if other.positions != self.args.positions:
                raise ValueError(f"SenCache runs every block with the head block's arguments, but "
                                 f"{type(block).__name__} takes its streams at {other.positions} and "
                                 f"{type(self.blocks[0]).__name__} at {self.args.positions}")
        self.codecs = [_codec(layout) for layout in self.layouts]
        self.hook_name = hook_name
        self.head: Head | None = None  # set while a transformer call runs
        self.streams = ("hidden_states", "encoder_hidden_states") if self.carries_encoder else ("hidden_states",)
        # Where the streams sit in a block call: (name, position) each, the position "past any call" when the forward
        # has no such parameter; the second stream's name is None where the blocks carry one.
        (self._n0, self._p0), (self._n1, self._p1) = [
            (name, sys.maxsize if self.args.positions[name] is None else self.args.positions[name])
            for name in self.streams] + [(None, sys.maxsize)] * (2 - len(self.streams))
        self.unpacks = [unpack for unpack, _ in self.codecs]
        self.bare = all(layout == (0, None) for layout in self.layouts)  # every block returns its hidden states alone
        self.forwards: list[Callable[..., Any]] = []  # the blocks' forwards below our hooks
        self.compiled: list[Callable[..., Any] | None] = [None] * len(self.blocks)  # taken by adopt_compiled
        self.calls: list[Callable[..., Any]] | None = None  # what ``run`` calls when some blocks are compiled
        self.generation = 0  # counts the blocks' changes of compiled code (graph mode captures again)

    def attach(self) -> None:
        """Hook every block (the first one is the head)."""
        for i, block in enumerate(self.blocks):
            hook = _BlockHook(self, head=i == 0, pack=self.codecs[i][1])
            register_inside(block, hook, self.hook_name)  # below context parallelism's split: each rank's shard
            self.forwards.append(hook.fn_ref.original_forward)

    def detach(self) -> None:
        """Remove the hooks; blocks compiled by region get their compiled call back."""
        for block, impl in zip(self.blocks, self.compiled, strict=True):
            plumbing.remove_hook(block, self.hook_name)
            if impl is not None and block._compiled_call_impl is None:
                block._compiled_call_impl = impl
        self.forwards, self.compiled, self.calls = [], [None] * len(self.blocks), None

    def adopt_compiled(self) -> None:
        """Take the compiled call of every block compiled by region since the last look (one attribute read per
        block; SenCache's hook looks at every pipeline call, so that compiling after ``apply_sencache`` works too)."""
        taken = False
        for i, block in enumerate(self.blocks):
            impl = block._compiled_call_impl
            if impl is not None:
                block._compiled_call_impl = None  # the block's own call (and our hook) stays eager
                self.compiled[i], taken = impl, True
        if taken:
            self.calls = [c or f for c, f in zip(self.compiled, self.forwards, strict=True)]
            self.generation += 1

    def running(self, head: Head) -> _Running:
        """Within this block, the head block returns ``head.replace_stack(carried, args, kwargs)`` and the others
        pass their input through. ``head`` is a long-lived object, so that torch.compile guards stay the same."""
        return _Running(self, head)

    def carried(self, args: tuple, kwargs: dict) -> Carried:
        """The streams the blocks carry, from the arguments of a block call (None for one not passed). Written out
        for one or two streams, without a loop: every block of every call asks."""
        p0, n1 = self._p0, self._n1  # a stream passed by position, else by name (a valid call has not both)
        h = args[p0] if p0 < len(args) else kwargs.get(self._n0)
        if n1 is None:
            return (h,)
        return h, args[self._p1] if self._p1 < len(args) else kwargs.get(n1)

    def run(self, carried: Carried, args: tuple, kwargs: dict,
            calls: list[Callable[..., Any]] | None = None) -> Carried:
        """Every block on ``carried`` (each block takes the head block's other arguments). Blocks compiled by region
        run their compiled code, except while torch.compile traces the call (compiled mode compiles the whole step).
        ``calls``: what to call for the blocks, where the caller chose (else the blocks' forwards or compiled code)."""
        if calls is None:
            calls = self.calls
            if calls is not None and not torch.compiler.is_compiling():
                head, self.head = self.head, None  # the compiled code calls the block's hook: it must pass through
                try:
                    return self.run(carried, args, kwargs, calls)
                finally:
                    self.head = head
            calls = self.forwards
        args, kwargs = list(args), dict(kwargs)
        p0, n1 = self._p0, self._n1  # where each stream goes: by position where it came so, else by name
        w0, k0 = (args, p0) if p0 < len(args) else (kwargs, self._n0)
        if self.bare:  # (then one stream)
            h = carried[0]
            for call in calls:
                w0[k0] = h
                h = call(*args, **kwargs)
            return (h,)
        if n1 is None:
            for call, unpack in zip(calls, self.unpacks, strict=True):
                w0[k0] = carried[0]
                carried = unpack(call(*args, **kwargs))
            return carried
        p1 = self._p1
        w1, k1 = (args, p1) if p1 < len(args) else (kwargs, n1)
        for call, unpack in zip(calls, self.unpacks, strict=True):
            w0[k0], w1[k1] = carried
            carried = unpack(call(*args, **kwargs))
        return carried

    @staticmethod
    def residual(out: Carried, carried: Carried) -> Carried:
        """``blocks_out - blocks_in``, per stream (None where the output is None)."""
        if len(out) == 1:  # one stream: no comprehension's frame (every computed call; ``run`` keeps the streams)
            o = out[0]
            return (None if o is None else o - carried[0],)
        return tuple([None if o is None else o - c for o, c in zip(out, carried, strict=True)])

    @staticmethod
    def store_residual(out: Carried, carried: Carried, dst: Carried, flag: torch.Tensor | None = None) -> None:
        """``dst <- blocks_out - blocks_in`` in place; with the device ``flag``, only when it says compute."""
        for o, c, r in zip(out, carried, dst, strict=True):
            if o is None:
                continue
            if flag is None:
                torch.sub(o, c, out=r)
            else:
                commit(flag, o, c, r)

    @staticmethod
    def skip(carried: Carried, residual: Carried) -> Carried:
        """``blocks_in + residual``, per stream: the stack's output on a skipped step."""
        if len(carried) == 1 == len(residual):  # one stream: no comprehension's frame (every skipped call)
            r = residual[0]
            return (None if r is None else carried[0] + r,)
        return tuple([None if r is None else c + r for c, r in zip(carried, residual, strict=True)])


class _Running:
    """The context manager of :meth:`BlockStack.running` (a plain class: cheaper to enter than a generator's)."""

    __slots__ = ("head", "stack")

    def __init__(self, stack: BlockStack, head: Head) -> None:
        self.stack, self.head = stack, head

    def __enter__(self) -> None:
        self.stack.head = self.head

    def __exit__(self, *exc: object) -> None:
        self.stack.head = None


class _BlockHook(ModelHook):
    """One block's hook: runs the block outside a cached call; within one, the head block stands for the whole
    stack and the others pass their input through."""

    def __init__(self, stack: BlockStack, head: bool, pack: Callable[[tuple], Any]) -> None:
        super().__init__()
        self.stack = stack
        self.is_head = head
        self.pack = pack  # the carried streams in this block's output order

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        stack = self.stack
        head = stack.head
        if head is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        if stack.bare:  # the hidden states alone, in and out: stack.carried and the codec, inlined (every block)
            p0 = stack._p0
            h = args[p0] if p0 < len(args) else kwargs.get(stack._n0)
            return head.replace_stack((h,), args, kwargs)[0] if self.is_head else h
        carried = stack.carried(args, kwargs)
        if self.is_head:
            carried = head.replace_stack(carried, args, kwargs)
        return self.pack(carried)  # what this block returns for the streams

