"""The diffusers plumbing in one place: finding a call's arguments, the cache context a pipeline set, the hook
registries, and the transformer (and scheduler) behind a pipeline."""

from __future__ import annotations

import inspect
import sys
import threading
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, StateManager

try:  # diffusers >= 0.42 passes a CacheContext; older releases pass the context name
    from diffusers.hooks.hooks import CacheContext
except ImportError:  # pragma: no cover - depends on the installed diffusers
    CacheContext = None


class Args:
    """Where the named arguments of a ``forward`` sit, so that calls can be read and rewritten by name."""

    def __init__(self, forward: Any, *names: str) -> None:
        params = [p.name for p in inspect.signature(forward).parameters.values() if p.name != "self"]
        self.positions = {name: params.index(name) if name in params else None for name in names}

    def get(self, args: tuple, kwargs: dict, name: str) -> Any:
        """The value of argument ``name`` in a call, or None when it was not passed."""
        if name in kwargs:
            return kwargs[name]
        pos = self.positions[name]
        if pos is not None and pos < len(args):
            return args[pos]
        return None

    def replace(self, args: tuple, kwargs: dict, **values: Any) -> tuple[tuple, dict]:
        """The call's ``(args, kwargs)`` with the named arguments set to ``values``."""
        args, kwargs = list(args), dict(kwargs)
        for name, value in values.items():
            pos = self.positions[name]
            if name in kwargs or pos is None or pos >= len(args):
                kwargs[name] = value
            else:
                args[pos] = value
        return tuple(args), kwargs


class _ThreadContext(StateManager):
    """A ``StateManager`` whose context (what ``cache_context`` sets) is per thread: two threads calling one
    transformer each see their own. ``local.where`` holds the context's ``(name, step_index, num_inference_steps)``
    (None outside ``cache_context``), read once when the context is set."""

    def __init__(self) -> None:
        self.local = threading.local()
        super().__init__(NoState)

    @property
    def _context(self) -> Any:
        return getattr(self.local, "context", None)

    @_context.setter
    def _context(self, value: Any) -> None:
        self.set_context(value)

    def set_context(self, context: Any) -> None:  # what cache_context calls twice per transformer call: one frame
        local = self.local
        local.context = context
        if context is None:
            local.where = None
        elif type(context) is CacheContext:  # diffusers >= 0.42
            local.where = (context.name, context.step_index, context.num_inference_steps)
        else:  # the name (older diffusers), or an object like a CacheContext
            local.where = (getattr(context, "name", context), getattr(context, "step_index", None),
                           getattr(context, "num_inference_steps", None))

    def current(self) -> tuple[str, int | None, int | None] | None:
        """(name, step_index, num_inference_steps) of the context ``cache_context`` set in this thread, or None."""
        return getattr(self.local, "where", None)


class NoState(BaseState):
    """The per-context state of a hook that keeps its own: diffusers' ``StateManager`` then only tells the context."""

    def reset(self) -> None:
        pass


def context_manager() -> _ThreadContext:
    """A ``StateManager`` for a stateful hook: diffusers' ``cache_context`` sets the current context on it (one per
    thread)."""
    return _ThreadContext()


def set_context(manager: StateManager, name: str | None) -> None:
    """Set (or clear, with None) the context of ``manager`` as ``cache_context`` would."""
    manager.set_context(CacheContext(name) if (CacheContext is not None and name is not None) else name)


def pipeline_in_flight(module: torch.nn.Module, depth: int = 32) -> Any | None:
    """The pipeline whose call is running ``module`` now: the nearest caller whose ``self`` holds ``module`` as a
    component (``transformer``, ``transformer_2``), or None (an integrator's own loop). Read once per pipeline call."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self") if "self" in frame.f_code.co_varnames else None
        if owner is not None and not isinstance(owner, torch.nn.Module) and hasattr(owner, "scheduler") and any(
                getattr(owner, name, None) is module for name in ("transformer", "transformer_2")):
            return owner
        frame = frame.f_back
    return None


def split(target: Any) -> tuple[torch.nn.Module, Any | None]:
    """(transformer, scheduler) from a pipeline or a bare transformer."""
    if isinstance(target, torch.nn.Module):
        return target, None
    transformer = getattr(target, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise ValueError(f"expected a diffusers pipeline with a `transformer` or a transformer module, "
                         f"got {type(target).__name__}")
    return transformer, getattr(target, "scheduler", None)


def transformers(target: Any) -> list[torch.nn.Module]:
    """The transformer(s) of a pipeline (Wan 2.2 has two experts: ``transformer`` and ``transformer_2``), or the
    bare transformer itself."""
    first, _ = split(target)
    second = None if isinstance(target, torch.nn.Module) else getattr(target, "transformer_2", None)
    return [first, second] if isinstance(second, torch.nn.Module) else [first]


def output_tensor(out: Any) -> torch.Tensor:
    """The sample of a transformer's output (a ``return_dict=False`` tuple or an output dataclass)."""
    return out[0] if isinstance(out, (tuple, list)) else out.sample


def registry(module: torch.nn.Module) -> HookRegistry:
    return HookRegistry.check_if_exists_or_initialize(module)


def find_hook(module: torch.nn.Module, name: str) -> Any | None:
    """The hook registered as ``name`` on ``module``, or None."""
    reg = getattr(module, "_diffusers_hook", None)
    return reg.get_hook(name) if reg is not None else None


def remove_hook(module: torch.nn.Module, name: str) -> None:
    """Remove the hook ``name`` from ``module`` (no-op where there is none)."""
    if find_hook(module, name) is not None:
        module._diffusers_hook.remove_hook(name, recurse=False)


def invalidate(transformer: torch.nn.Module) -> None:
    """Make ``cache_context`` see hooks added to or removed from the transformer's submodules."""
    reg = registry(transformer)
    if hasattr(reg, "invalidate_child_registries_cache"):
        reg.invalidate_child_registries_cache()
