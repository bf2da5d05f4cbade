"""The diffusers integration: a decision hook on the transformer and pass-through hooks on its blocks.

Data flow of one step (eager mode): the transformer hook takes the decision on the deciding context's call (the
first context of a pipeline call, e.g. Wan's "cond"), reading one flag on the host; the other contexts (Wan's
"uncond") follow it. The blocks then either run, the head recording ``blocks_in`` and the tail storing
``blocks_out - blocks_in`` as the context's residual, or pass their inputs through, the head adding the cached
residual. Everything outside the block stack runs at the new timestep every step.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from sencache.adapters import Adapter, get_adapter
from sencache.config import SenCacheConfig
from sencache.stats import CallStats, StatsRecorder
from sencache_kernels import COMPUTE, NONFINITE, DecisionState

try:  # diffusers >= 0.42 passes a CacheContext; older releases pass the context name
    from diffusers.hooks.hooks import CacheContext
except ImportError:  # pragma: no cover - depends on the installed diffusers
    CacheContext = None

_HOOK = "sencache"
_BLOCK_HOOK = "sencache_block"
_MAX_HISTORY = 64


def _arg_position(fn: Any, name: str) -> int | None:
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    names = [p.name for p in params]
    return names.index(name) if name in names else None


def _get_arg(args: tuple, kwargs: dict, name: str, pos: int | None) -> Any:
    if name in kwargs:
        return kwargs[name]
    if pos is not None and pos < len(args):
        return args[pos]
    return None


def _context_of(manager: StateManager) -> tuple[str, int | None, int | None] | None:
    """(name, step_index, num_inference_steps) of the context set by ``cache_context``, or None."""
    ctx = getattr(manager, "_context", None)
    if ctx is None:
        ctx = getattr(manager, "_current_context", None)
    if ctx is None:
        return None
    return getattr(ctx, "name", ctx), getattr(ctx, "step_index", None), getattr(ctx, "num_inference_steps", None)


def _set_context(manager: StateManager, name: str | None) -> None:
    manager.set_context(CacheContext(name) if (CacheContext is not None and name is not None) else name)


class _ContextState(BaseState):
    """What one context (e.g. "cond") caches: the block-stack input of the running step and the last residual."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.epoch = -1
        self.blocks_in: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.residual: tuple[torch.Tensor, torch.Tensor | None] | None = None


class _Shared:
    """State shared by all contexts of one transformer: the decision, its device state, the call's statistics."""

    def __init__(self) -> None:
        self.epoch = 0
        self.state: DecisionState | None = None
        self.history: list[StatsRecorder] = []
        self.active: tuple[bool, _ContextState] | None = None
        self.reset()

    def reset(self) -> None:
        self.epoch += 1
        self.leader: str | None = None
        self.step = -1
        self.num_steps = 0
        self.signature: tuple | None = None
        self.timesteps_obj: Any = None
        self.compute = True
        self.warned_nonfinite = False
        self.recorder: StatsRecorder | None = None

    def start_call(self, leader: str, signature: tuple, num_steps: int, timesteps_obj: Any) -> None:
        self.reset()
        self.leader, self.signature, self.num_steps, self.timesteps_obj = leader, signature, num_steps, timesteps_obj
        self.recorder = StatsRecorder(num_steps)
        self.history.append(self.recorder)
        del self.history[:-_MAX_HISTORY]


class SenCacheHook(ModelHook):
    """Transformer-level hook: takes (or follows) the step's decision, then runs the forward with the blocks hooked."""

    _is_stateful = True

    def __init__(self, config: SenCacheConfig, adapter: Adapter, scheduler: Any | None) -> None:
        super().__init__()
        self.config = config
        self.adapter = adapter
        self.scheduler = scheduler
        self.state_manager = StateManager(_ContextState)
        self.shared = _Shared()
        self.force_first = max(1, adapter.force_first_steps if config.force_first_steps is None
                               else config.force_first_steps)
        self.force_last = adapter.force_last_steps if config.force_last_steps is None else config.force_last_steps

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        fwd = type(module).forward
        self._latent_pos = _arg_position(fwd, self.adapter.latent_arg)
        self._timestep_pos = _arg_position(fwd, self.adapter.timestep_arg)
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """Called by diffusers at the end of every pipeline call: the next call starts from nothing."""
        self.shared.reset()
        self.state_manager.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        ctx = _context_of(self.state_manager)
        if ctx is not None:
            return self._forward(ctx, args, kwargs)
        _set_context(self.state_manager, "default")  # called outside cache_context: one implicit context
        try:
            return self._forward(("default", None, None), args, kwargs)
        finally:
            _set_context(self.state_manager, None)

    def _forward(self, ctx: tuple[str, int | None, int | None], args: tuple, kwargs: dict) -> Any:
        x = _get_arg(args, kwargs, self.adapter.latent_arg, self._latent_pos)
        t = _get_arg(args, kwargs, self.adapter.timestep_arg, self._timestep_pos)
        if not isinstance(x, torch.Tensor) or t is None:
            raise ValueError(f"SenCache: the transformer was called without `{self.adapter.latent_arg}` or "
                             f"`{self.adapter.timestep_arg}`")
        sh = self.shared
        name = ctx[0]
        if sh.leader is None or name == sh.leader:
            self._decide(ctx, x, t)
        cs: _ContextState = self.state_manager.get_state()
        if cs.epoch != sh.epoch:
            cs.reset()
            cs.epoch = sh.epoch
        compute = sh.compute or cs.residual is None or cs.residual[0].shape[0] != x.shape[0]
        if compute and sh.recorder is not None:
            sh.recorder.block_stack_calls += 1
        sh.active = (compute, cs)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            sh.active = None

    def _num_steps(self, ctx_steps: int | None) -> int:
        if ctx_steps:
            return int(ctx_steps)
        ts = getattr(self.scheduler, "timesteps", None)
        if ts is not None:
            return len(ts)
        if self.config.num_inference_steps is not None:
            return self.config.num_inference_steps
        raise ValueError("SenCache does not know the number of denoising steps: apply it to the pipeline "
                         "(sencache.apply_sencache(pipe, config)) or set SenCacheConfig(num_inference_steps=...)")

    def _decide(self, ctx: tuple[str, int | None, int | None], x: torch.Tensor, t: Any) -> None:
        sh = self.shared
        name, step_index, ctx_steps = ctx
        tb = self._per_sample_timestep(t, x)  # validates before any state changes
        num_steps = self._num_steps(ctx_steps)
        timesteps_obj = getattr(self.scheduler, "timesteps", None)
        signature = (tuple(x.shape), x.dtype, x.device, num_steps)
        new_call = (
            sh.leader is None
            or signature != sh.signature
            or sh.step + 1 >= sh.num_steps
            or (step_index is not None and step_index <= sh.step)
            or (timesteps_obj is not None and timesteps_obj is not sh.timesteps_obj)
        )
        if new_call:
            sh.start_call(name, signature, num_steps, timesteps_obj)
        step = sh.step + 1 if step_index is None else int(step_index)
        sh.step = step

        if sh.state is None or not sh.state.matches(x):
            sh.state = DecisionState(x)
        cfg = self.config
        jx_now, jt_now = cfg.profile.lookup(tb, cfg.interpolation)
        eps = cfg.tolerance(step, num_steps)
        forced = step < self.force_first or step >= num_steps - self.force_last
        sh.state.decide(x, tb, jx_now, jt_now, eps, forced, cfg.max_consecutive_skips)
        flag = sh.state.read_flag()  # the one host read of an eager step
        if flag & NONFINITE and not sh.warned_nonfinite:
            sh.warned_nonfinite = True
            warnings.warn("SenCache: the latent contains NaN or Inf; such steps are always computed, never skipped. "
                          "Check the inputs and the model's dtype.", RuntimeWarning, stacklevel=4)
        sh.compute = bool(flag & COMPUTE)
        threshold = eps * math.sqrt(x.numel() // x.shape[0])
        sh.recorder.record(tb, sh.state.score, threshold, forced, sh.compute)

    @staticmethod
    def _per_sample_timestep(t: Any, x: torch.Tensor) -> torch.Tensor:
        """The timestep as float32 ``[B]`` on the latent's device (one value per sample)."""
        b = x.shape[0]
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t), device=x.device)
        if t.device != x.device:
            raise ValueError(f"SenCache: timestep is on {t.device} but the latent is on {x.device}; put both on "
                             "the same device")
        t = t.to(torch.float32)
        if t.dim() == 0 or t.numel() == 1:
            return t.reshape(1).expand(b).contiguous()
        if t.shape[0] != b:
            raise ValueError(f"SenCache: timestep has {t.shape[0]} entries for a batch of {b}")
        return t.reshape(b, -1).amax(dim=1).contiguous()


class SenCacheBlockHook(ModelHook):
    """Block-level hook: runs the block on computed steps, passes inputs through on skipped ones."""

    def __init__(self, shared: _Shared, adapter: Adapter, is_head: bool, is_tail: bool) -> None:
        super().__init__()
        self.shared = shared
        self.adapter = adapter
        self.is_head = is_head
        self.is_tail = is_tail

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        fwd = type(module).forward
        self._hidden_pos = _arg_position(fwd, "hidden_states")
        self._encoder_pos = _arg_position(fwd, "encoder_hidden_states")
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        active = self.shared.active
        if active is None:  # called outside the hooked transformer's forward
            return self.fn_ref.original_forward(*args, **kwargs)
        compute, cs = active
        hidden = _get_arg(args, kwargs, "hidden_states", self._hidden_pos)
        encoder = None
        if self.adapter.blocks_update_encoder:
            encoder = _get_arg(args, kwargs, "encoder_hidden_states", self._encoder_pos)
        if compute:
            if self.is_head:
                cs.blocks_in = (hidden, encoder)
            out = self.fn_ref.original_forward(*args, **kwargs)
            if self.is_tail:
                h_in, e_in = cs.blocks_in
                if self.adapter.blocks_update_encoder:
                    cs.residual = (out[0] - h_in, out[1] - e_in)
                else:
                    cs.residual = (out - h_in, None)
                cs.blocks_in = None
            return out
        if self.is_head:
            hidden = hidden + cs.residual[0]
            if encoder is not None:
                encoder = encoder + cs.residual[1]
        return (hidden, encoder) if self.adapter.blocks_update_encoder else hidden


def _split(target: Any) -> tuple[torch.nn.Module, Any | None]:
    """(transformer, scheduler) from a pipeline or a bare transformer."""
    if isinstance(target, torch.nn.Module):
        return target, None
    transformer = getattr(target, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise ValueError(f"expected a diffusers pipeline with a `transformer` or a transformer module, "
                         f"got {type(target).__name__}")
    return transformer, getattr(target, "scheduler", None)


def _hook(transformer: torch.nn.Module) -> SenCacheHook | None:
    registry = getattr(transformer, "_diffusers_hook", None)
    return registry.get_hook(_HOOK) if registry is not None else None


def apply_sencache(target: Any, config: SenCacheConfig) -> None:
    """Enable SenCache on a diffusers pipeline (preferred) or on its transformer.

    Applying again replaces the previous configuration.

    Args:
        target: a Wan, CogVideoX or LTX-Video pipeline, or its transformer. With a bare transformer outside a
            pipeline that reports its step count, set ``config.num_inference_steps``.
        config: the ``SenCacheConfig`` (with its ``SensitivityProfile``).

    Raises:
        ValueError: unsupported transformer, a profile made for another transformer class or scheduler, or a
            diffusers cache already enabled on the transformer.
    """
    if not isinstance(config, SenCacheConfig):
        raise ValueError(f"apply_sencache needs a SenCacheConfig, got {type(config).__name__}")
    transformer, scheduler = _split(target)
    adapter = get_adapter(transformer)
    config.profile.check_compatible(transformer, scheduler)
    if getattr(transformer, "_cache_config", None) is not None:
        raise ValueError("a diffusers cache is already enabled on this transformer; call "
                         "transformer.disable_cache() before apply_sencache")
    if _hook(transformer) is not None:
        remove_sencache(transformer)
    blocks = adapter.block_list(transformer)
    hook = SenCacheHook(config, adapter, scheduler)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, _HOOK)
    for i, block in enumerate(blocks):
        block_hook = SenCacheBlockHook(hook.shared, adapter, is_head=i == 0, is_tail=i == len(blocks) - 1)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(block_hook, _BLOCK_HOOK)
    _invalidate(transformer)


def remove_sencache(target: Any) -> None:
    """Disable SenCache and restore the transformer's original forward passes (no-op if not applied)."""
    transformer, _ = _split(target)
    if _hook(transformer) is None:
        return
    transformer._diffusers_hook.remove_hook(_HOOK, recurse=False)
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook(_BLOCK_HOOK) is not None:
            registry.remove_hook(_BLOCK_HOOK, recurse=False)
    _invalidate(transformer)


def _invalidate(transformer: torch.nn.Module) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()


def get_stats(target: Any, call: int = -1) -> CallStats:
    """Statistics of one pipeline call (the latest by default; ``call`` indexes the kept history).

    Args:
        target: the pipeline or transformer SenCache was applied to.
        call: index into the calls since ``apply_sencache`` (last 64 kept); -1 is the latest.
    """
    transformer, _ = _split(target)
    hook = _hook(transformer)
    if hook is None:
        raise ValueError("SenCache is not applied to this pipeline/transformer; call sencache.apply_sencache first")
    history = hook.shared.history
    if not history:
        raise ValueError("no pipeline call has run with SenCache yet")
    return history[call].materialize()
