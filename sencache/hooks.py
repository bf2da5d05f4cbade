"""The diffusers integration: SenCache's hook on the transformer, and ``apply_sencache`` / ``remove_sencache`` /
``get_stats``.

One transformer call, in every mode: the context's name (plumbing) -> the step clock (a new step of the leading
context?) -> the mode's executor, which takes the decision (leading context) and runs the forward while the block
stack asks it for the stack's output. ``auto`` tries its executors in order and falls back when one is unavailable.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import warnings
from typing import Any

import torch
from diffusers.hooks.hooks import ModelHook

from sencache import parallel, plumbing
from sencache.adapters import Adapter, get_adapter
from sencache.clock import StepClock
from sencache.config import SenCacheConfig
from sencache.modes import MODES, Context, Executor, Unavailable, build_chain
from sencache.profile import scheduler_range
from sencache.stack import BlockStack, LinearResidual, Residual
from sencache.stats import CallStats, group_calls, merge

_HOOK = "sencache"
_BLOCK_HOOK = "sencache_block"
logger = logging.getLogger("sencache")

__all__ = ["MODES", "SenCacheHook", "apply_sencache", "get_stats", "remove_sencache", "residual_bytes"]


class Lane:
    """One thread's pipeline calls on the transformer: their step clock and each context's cache."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock
        self.contexts: dict[str, Context] = {}


class SenCacheHook(ModelHook):
    """Transformer-level hook: one transformer call of a denoising step (see the module docstring)."""

    _is_stateful = True
    # Everything but ``state_manager`` (and the base class's ``fn_ref``) in slots, out of the instance ``__dict__``:
    # diffusers' ``cache_context`` scans a stateful hook's ``vars()`` for state managers twice per transformer call.
    __slots__ = ("adapter", "adopted", "arg_slots", "args", "chain", "compile_options", "config", "lane", "latest",
                 "local", "lock", "new_clock", "requested_mode", "stack")

    def __init__(self, config: SenCacheConfig, adapter: Adapter, pipeline: Any | None, stack: BlockStack,
                 mode: str = "eager", compile_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.adapter = adapter
        self.stack = stack
        self.requested_mode = mode
        self.compile_options = compile_options
        self.state_manager = plumbing.context_manager()  # diffusers' cache_context tells the context through it
        force_first = max(1, adapter.force_first_steps if config.force_first_steps is None
                          else config.force_first_steps)
        force_last = adapter.force_last_steps if config.force_last_steps is None else config.force_last_steps
        probe = functools.partial(parallel.layout, hook_name=_HOOK, latent_arg=adapter.latent_arg)
        self.new_clock = lambda: StepClock(config, pipeline, force_first, force_last, probe)
        # Per thread: its pipeline calls (a Lane). One transformer call at a time holds the lock: the block stack's
        # hooks and the executors serve the call in flight, whose lane is ``self.lane``.
        self.lock = threading.RLock()
        self.local = threading.local()
        self.lane = self.latest = self.own_lane()
        self.chain: list[Executor] | None = None  # the executors to try, resolved on the first call
        self.adopted: Any = None  # the pipeline call (its StatsRecorder) the stack last looked for compiled blocks in

    @property
    def mode(self) -> str:
        """The mode in use: the requested one until the first call resolves it; changes on a fallback."""
        return self.requested_mode if self.chain is None else self.chain[0].name

    @property
    def clock(self) -> StepClock:
        """The step clock of the call in flight (between calls: the latest call's)."""
        return self.lane.clock

    @property
    def contexts(self) -> dict[str, Context]:
        return self.lane.contexts

    def own_lane(self) -> Lane:
        """This thread's lane (made on its first call)."""
        lane = getattr(self.local, "lane", None)
        if lane is None:
            lane = self.local.lane = Lane(self.new_clock())
        return lane

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.args = plumbing.Args(type(module).forward, self.adapter.latent_arg, self.adapter.timestep_arg,
                                  *self.adapter.uncacheable_args)
        positions = [self.args.positions[n] for n in (self.adapter.latent_arg, self.adapter.timestep_arg)]
        self.arg_slots = (self.adapter.latent_arg, sys.maxsize if positions[0] is None else positions[0],
                          self.adapter.timestep_arg, sys.maxsize if positions[1] is None else positions[1])
        return module

    def latent(self, args: tuple, kwargs: dict) -> Any:
        return self.args.get(args, kwargs, self.adapter.latent_arg)

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """Called by diffusers at the end of every pipeline call: this thread's next call starts from nothing."""
        with self.lock:
            lane = self.own_lane()
            lane.clock.reset()
            if self.chain is not None:
                self.chain[0].end_call(lane.contexts)
            self.state_manager.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        ctx = getattr(self.state_manager.local, "where", None)  # state_manager.current(), inlined
        name, step_index, ctx_steps = ("default", None, None) if ctx is None else ctx  # outside cache_context
        x_name, x_pos, t_name, t_pos = self.arg_slots  # Args.get of the latent and the timestep, inlined
        x = kwargs[x_name] if x_name in kwargs else args[x_pos] if x_pos < len(args) else None
        t = kwargs[t_name] if t_name in kwargs else args[t_pos] if t_pos < len(args) else None
        if not isinstance(x, torch.Tensor) or t is None:
            raise ValueError(f"SenCache: the transformer was called without `{self.adapter.latent_arg}` or "
                             f"`{self.adapter.timestep_arg}`")
        for arg in self.adapter.uncacheable_args:  # they change the stack from inside: it cannot stand for it
            if self.args.get(args, kwargs, arg) is not None:
                raise ValueError(f"SenCache cannot cache {type(module).__name__}'s block stack in a call with "
                                 f"`{arg}` (it changes the streams between blocks); call "
                                 "sencache.remove_sencache(pipe) for such calls")
        with self.lock:
            lane = self.lane = self.latest = getattr(self.local, "lane", None) or self.own_lane()
            name, step = lane.clock.enter(module, name, x, t, step_index, ctx_steps)
            if self.chain is None:
                self.chain = build_chain(self, self.requested_mode, x, self.compile_options)
            if self.adopted is not lane.clock.recorder:  # once per pipeline call (its statistics name it): blocks
                self.adopted = lane.clock.recorder  # compiled by region (also after apply_sencache) run in the stack
                self.stack.adopt_compiled()
            ctx = lane.contexts.get(name)
            if ctx is None:
                ctx = lane.contexts[name] = Context(LinearResidual() if self.config.forecast == "linear"
                                                    else Residual())
            while True:
                try:
                    return self.chain[0](ctx, step, args, kwargs)
                except Unavailable as exc:
                    if len(self.chain) == 1:
                        raise
                    self.chain.pop(0)
                    self.fall_back(str(exc), self.chain[0].name)

    def fall_back(self, reason: str, to: str) -> None:
        """Say why the mode changes to ``to``: a log record under ``mode="auto"``, else one warning."""
        message = f"SenCache: {reason}; running in {to} mode instead (same outputs, only the speed differs)"
        if self.requested_mode == "auto":
            logger.info(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=6)


def _hook(transformer: torch.nn.Module) -> SenCacheHook | None:
    return plumbing.find_hook(transformer, _HOOK)


def apply_sencache(target: Any, config: SenCacheConfig, mode: str = "eager",
                   compile_options: dict[str, Any] | None = None) -> None:
    """Enable SenCache on a diffusers pipeline (preferred) or on its transformer.

    Applying again replaces the previous configuration.

    Args:
        target: a Wan, CogVideoX or LTX-Video pipeline, or its transformer. With a bare transformer outside a
            pipeline that reports its step count, set ``config.num_inference_steps``.
        config: the ``SenCacheConfig`` (with its ``SensitivityProfile``).
        mode: ``"eager"`` (one host read of the decision flag per step), ``"compiled"`` (the decision, the skip and
            the transformer's forward in one ``torch.compile(fullgraph=True)`` graph; inductor reads the skip's
            predicate on the host, one sync per call), ``"graph"`` (each transformer call replays one CUDA graph
            with the block stack under a conditional node; no host read; needs CUDA 12.4+ and the extension built
            with CUDA, else it warns once and runs eager) or
            ``"auto"`` (graph, else compiled, else eager; the reasons go to the ``sencache`` logger). Wrapping a
            SenCache-enabled transformer in ``torch.compile`` yourself still gives correct results, but its
            host-side bookkeeping breaks the graph and recompiles at every step: use ``mode="compiled"``.
        compile_options: extra ``torch.compile`` arguments for ``mode="compiled"`` (or ``"auto"`` when it falls back
            to compiled), e.g. ``{"mode": "reduce-overhead"}`` (CUDA-graph trees for the graphs without the skip's
            ``torch.cond``; outputs are then copied out of the trees' memory) or ``{"backend": "aot_eager"}``.

    Raises:
        ValueError: unsupported transformer or mode, a profile made for another transformer class or scheduler, or a
            diffusers cache already enabled on the transformer.
    """
    if not isinstance(config, SenCacheConfig):
        raise ValueError(f"apply_sencache needs a SenCacheConfig, got {type(config).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if compile_options is not None and mode not in ("compiled", "auto"):
        raise ValueError("compile_options only apply to mode='compiled' (or 'auto')")
    if config.forecast != "reuse" and mode == "compiled":
        raise ValueError(f"SenCacheConfig(forecast={config.forecast!r}) runs in eager mode only: use mode='eager' "
                         "(or 'auto', which then runs eager), or forecast='reuse' in compiled mode")
    transformers = plumbing.transformers(target)
    scheduler = plumbing.split(target)[1]
    adapters = [get_adapter(tr) for tr in transformers]
    for tr in transformers:
        config.profile.check_compatible(tr, scheduler)
    span = scheduler_range(scheduler)  # the profile is in the transformer's timestep units
    if span is not None:  # warns once where the profile misses much of the range
        config.profile.check_range(*(v * adapters[0].timestep_scale for v in span), stacklevel=3)
    for tr in transformers:
        if getattr(tr, "_cache_config", None) is not None and _hook(tr) is None:
            raise ValueError("a diffusers cache is already enabled on this transformer; call "
                             "transformer.disable_cache() before apply_sencache")
    pipeline = None if isinstance(target, torch.nn.Module) else target
    for tr, adapter in zip(transformers, adapters, strict=True):
        if _hook(tr) is not None:
            remove_sencache(tr)
        stack = adapter.stack(tr, _BLOCK_HOOK)
        hook = SenCacheHook(config, adapter, pipeline, stack, mode, compile_options)
        plumbing.registry(tr).register_hook(hook, _HOOK)
        stack.attach()
        plumbing.invalidate(tr)
        tr._cache_config = config  # diffusers' enable_cache then refuses to add its own cache on top


def remove_sencache(target: Any) -> None:
    """Disable SenCache and restore the transformers' original forward passes (no-op if not applied)."""
    for transformer in plumbing.transformers(target):
        hook = _hook(transformer)
        if hook is None:
            continue
        plumbing.remove_hook(transformer, _HOOK)
        hook.stack.detach()
        plumbing.invalidate(transformer)
        if getattr(transformer, "_cache_config", None) is hook.config:
            transformer._cache_config = None


def get_stats(target: Any, call: int = -1) -> CallStats:
    """Statistics of one pipeline call (the latest by default; ``call`` indexes the kept history): the calling
    thread's calls, or where it made none, those of the thread that called the transformer last. A pipeline with
    two experts (Wan 2.2) reports each call's steps of both.

    Args:
        target: the pipeline or transformer SenCache was applied to.
        call: index into the calls since ``apply_sencache`` (last 64 kept); -1 is the latest.
    """
    hooks = [h for h in (_hook(tr) for tr in plumbing.transformers(target)) if h is not None]
    if not hooks:
        raise ValueError("SenCache is not applied to this pipeline/transformer; call sencache.apply_sencache first")
    histories = []
    for hook in hooks:
        lane = getattr(hook.local, "lane", None)  # this thread's calls, else the latest thread's
        histories.append((lane if lane is not None and lane.clock.history else hook.latest).clock.history)
    calls = group_calls(histories)
    if not calls:
        raise ValueError("no pipeline call has run with SenCache yet")
    return merge(calls[call])


def residual_bytes(target: Any) -> int:
    """Bytes that SenCache's residual cache holds on ``target`` now: each CFG context's cached residual
    ``blocks_out - blocks_in`` (every stream the blocks carry, e.g. the encoder states too), in every mode (graph mode:
    the residual buffers of every captured call), summed over the transformers (Wan 2.2's two experts) for the calling
    thread's pipeline calls, else the latest thread's (as ``get_stats``). Not counted: the decision state (a copy of
    the latent per latent shape) and graph mode's captured memory pools. The size to compare with SenCache's memory
    overhead over the uncached model; eager mode frees its residuals at the end of each pipeline call.

    Args:
        target: the pipeline or transformer SenCache was applied to.
    """
    hooks = [h for h in (_hook(tr) for tr in plumbing.transformers(target)) if h is not None]
    if not hooks:
        raise ValueError("SenCache is not applied to this pipeline/transformer; call sencache.apply_sencache first")
    storages: dict[int, int] = {}  # one count per storage, whatever views of it the contexts hold
    for hook in hooks:
        lane = getattr(hook.local, "lane", None)
        lane = lane if lane is not None and lane.clock.history else hook.latest
        for ctx in lane.contexts.values():
            for r in ctx.residuals():
                storage = r.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())

