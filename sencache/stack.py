"""The block stack: the transformer's block list, the streams its blocks carry, running it, its residual and the skip.

Every cache here (SenCache in each execution mode, the TeaCache baseline) replaces the same thing: the evaluation of
the block stack inside one transformer call. ``BlockStack`` hooks every block. While a call is ``running(head)``, the
head block hands the stack's input to ``head.replace_stack(carried, args, kwargs)``, which returns the stack's
output (by running the blocks, or by adding a cached residual), and every other block passes its input through.
Outside such a call the blocks run as usual. The streams carried from block to block are ``(hidden,)``, or
``(hidden, encoder)`` for blocks that also update the encoder hidden states (CogVideoX).

Arithmetic, the same for every user: ``residual = blocks_out - blocks_in`` on a computed step,
``blocks_out = blocks_in + residual`` on a skipped one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from diffusers.hooks.hooks import ModelHook

from sencache import plumbing
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
            if r.shape != c.shape or r.dtype != c.dtype:
                return False
        return True

    def set(self, tensors: Carried, call: int) -> None:
        self.tensors, self.call = tensors, call

    def clear(self) -> None:
        self.tensors, self.call = None, -1


class BlockStack:
    """The block list of one transformer, hooked so that a cache can replace its evaluation.

    Args:
        blocks: the transformer's block ``ModuleList`` (the adapter's ``block_list``).
        carries_encoder: blocks return ``(hidden_states, encoder_hidden_states)`` rather than ``hidden_states``.
        hook_name: the name the block hooks are registered under.
    """

    def __init__(self, blocks: torch.nn.ModuleList, carries_encoder: bool, hook_name: str) -> None:
        self.blocks = blocks
        self.carries_encoder = carries_encoder
        self.hook_name = hook_name
        self.head: Head | None = None  # set while a transformer call runs
        self.args = plumbing.Args(type(blocks[0]).forward, "hidden_states", "encoder_hidden_states")
        self.streams = ("hidden_states", "encoder_hidden_states") if carries_encoder else ("hidden_states",)
        self.positions = [(name, self.args.positions[name]) for name in self.streams]
        self.forwards: list[Callable[..., Any]] = []  # the blocks' forwards below our hooks

    def attach(self) -> None:
        """Hook every block (the first one is the head)."""
        for i, block in enumerate(self.blocks):
            hook = _BlockHook(self, head=i == 0)
            plumbing.registry(block).register_hook(hook, self.hook_name)
            self.forwards.append(hook.fn_ref.original_forward)

    def detach(self) -> None:
        for block in self.blocks:
            plumbing.remove_hook(block, self.hook_name)
        self.forwards = []

    def running(self, head: Head) -> _Running:
        """Within this block, the head block returns ``head.replace_stack(carried, args, kwargs)`` and the others
        pass their input through. ``head`` is a long-lived object, so that torch.compile guards stay the same."""
        return _Running(self, head)

    def carried(self, args: tuple, kwargs: dict) -> Carried:
        """The streams the blocks carry, from the arguments of a block call (``Args.get``, inlined: every block of
        every call asks)."""
        return tuple([kwargs[name] if name in kwargs else args[pos] if pos is not None and pos < len(args) else None
                      for name, pos in self.positions])

    def run(self, carried: Carried, args: tuple, kwargs: dict) -> Carried:
        """Every block on ``carried`` (each block takes the head block's other arguments)."""
        args, kwargs = list(args), dict(kwargs)
        slots = [(args, pos) if name not in kwargs and pos is not None and pos < len(args) else (kwargs, name)
                 for name, pos in self.positions]  # where each stream goes in a block call
        for forward in self.forwards:
            for (where, key), value in zip(slots, carried, strict=True):
                where[key] = value
            out = forward(*args, **kwargs)
            carried = tuple(out) if self.carries_encoder else (out,)
        return carried

    @staticmethod
    def residual(out: Carried, carried: Carried) -> Carried:
        """``blocks_out - blocks_in``, per stream."""
        return tuple([o - c for o, c in zip(out, carried, strict=True)])

    @staticmethod
    def store_residual(out: Carried, carried: Carried, dst: Carried, flag: torch.Tensor | None = None) -> None:
        """``dst <- blocks_out - blocks_in`` in place; with the device ``flag``, only when it says compute."""
        for o, c, r in zip(out, carried, dst, strict=True):
            if flag is None:
                torch.sub(o, c, out=r)
            else:
                commit(flag, o, c, r)

    @staticmethod
    def skip(carried: Carried, residual: Carried) -> Carried:
        """``blocks_in + residual``, per stream: the stack's output on a skipped step."""
        return tuple([c + r for c, r in zip(carried, residual, strict=True)])


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

    def __init__(self, stack: BlockStack, head: bool) -> None:
        super().__init__()
        self.stack = stack
        self.is_head = head

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        stack = self.stack
        head = stack.head
        if head is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        carried = stack.carried(args, kwargs)
        if self.is_head:
            carried = head.replace_stack(carried, args, kwargs)
        return carried if stack.carries_encoder else carried[0]  # what a block returns for the streams
