"""The diffusers integration: a decision hook on the transformer and pass-through hooks on its blocks.

The transformer hook takes the decision on the deciding context's call (the first context of a pipeline call, e.g.
Wan's "cond"); the other contexts (Wan's "uncond") follow it. Everything outside the block stack runs at the new
timestep every step. Execution modes:

- ``"eager"``: the fused decision runs on the device and the hook reads its flag once on the host. The blocks then
  either run, the head recording ``blocks_in`` and the tail storing ``blocks_out - blocks_in`` as the context's
  residual, or pass their inputs through, the head adding the cached residual.
- ``"compiled"``: the decision, the reference update and the transformer's forward are one
  ``torch.compile(fullgraph=True)`` graph with no graph break. The head block runs the whole stack under
  ``torch.cond`` on the device flag (compute: every block; skip: ``blocks_in + residual``), ``sencache::commit``
  stores the new residual only on computed steps, and the other blocks pass through. Residuals and the decision state
  live in buffers with static addresses (``mark_static_address``), kept across pipeline calls. Inductor runs
  ``torch.cond`` by reading its predicate on the host (one sync per call, as in eager mode) and leaves graphs that
  hold one out of CUDA-graph trees; only graph mode skips without a host read. The bookkeeping that cannot be on the
  device (step counting, start of a call, the step's tolerance and forcing) stays in Python outside the graph and
  reaches it as tensors.
- ``"graph"``: each call replays a CUDA graph of the compiled mode's step in which the block stack sits under a
  conditional IF node set from the device flag (:mod:`sencache.graph`); no host sync and one launch per call.
- ``"auto"``: graph, else compiled, else eager, taking the first that works here and logging why each was passed
  over. On a CPU latent it takes eager: the other modes remove GPU launch and synchronisation costs, which a CPU run
  does not have.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager

from sencache import graph
from sencache.adapters import Adapter, get_adapter
from sencache.config import SenCacheConfig
from sencache.stats import CallStats, StatsRecorder
from sencache_kernels import COMPUTE, NONFINITE, DecisionState, commit

try:  # diffusers >= 0.42 passes a CacheContext; older releases pass the context name
    from diffusers.hooks.hooks import CacheContext
except ImportError:  # pragma: no cover - depends on the installed diffusers
    CacheContext = None

_HOOK = "sencache"
_BLOCK_HOOK = "sencache_block"
_MAX_HISTORY = 64
MODES = ("eager", "compiled", "graph", "auto")
logger = logging.getLogger("sencache")


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


class _DeviceSlot:
    """Compiled mode: one context's residual buffers, kept across pipeline calls (static addresses)."""

    def __init__(self) -> None:
        self.residual: tuple[torch.Tensor, ...] | None = None
        self.epoch = -1  # the pipeline call whose residual the buffers hold
        self.must_compute = True  # no valid residual for this call yet: run the stack without a cond
        self.pending: tuple[torch.Tensor, ...] | None = None  # residual produced by such a run, adopted after it

    def adopt(self) -> None:
        """Move a pending residual into the persistent buffers (reallocated, static, when the shapes changed)."""
        new, self.pending = self.pending, None
        old = self.residual
        same = old is not None and len(old) == len(new)
        if same and all((o.shape, o.dtype, o.device) == (n.shape, n.dtype, n.device)
                        for o, n in zip(old, new, strict=True)):
            for o, n in zip(old, new, strict=True):
                o.copy_(n)
            return
        self.residual = tuple(n.clone() for n in new)
        for r in self.residual:
            torch._dynamo.mark_static_address(r)


@dataclass
class _Active:
    """What the block hooks do during the transformer's forward: ``compute`` True/False (eager), or None (decided on
    the device: compiled mode keeps the residuals in ``slot``; graph mode builds its capture in ``building``)."""

    compute: bool | None
    cs: _ContextState | None = None
    slot: _DeviceSlot | None = None
    building: Any = None


class _Shared:
    """State shared by all contexts of one transformer: the decision, its device state, the call's statistics."""

    def __init__(self) -> None:
        self.epoch = 0
        self.state: DecisionState | None = None
        self.history: list[StatsRecorder] = []
        self.active: _Active | None = None
        self.block_forwards: list[Any] = []  # the blocks' forwards below our hooks (compiled mode runs them)
        self.slots: dict[str, _DeviceSlot] = {}
        self.states: OrderedDict[tuple, DecisionState] = OrderedDict()  # one per latent signature, kept across calls
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
        self.step_flag: torch.Tensor | None = None  # compiled mode: a copy of this step's flag, for the statistics

    def start_call(self, leader: str, signature: tuple, num_steps: int, timesteps_obj: Any) -> None:
        self.reset()
        self.leader, self.signature, self.num_steps, self.timesteps_obj = leader, signature, num_steps, timesteps_obj
        self.recorder = StatsRecorder(num_steps)
        self.history.append(self.recorder)
        del self.history[:-_MAX_HISTORY]


class SenCacheHook(ModelHook):
    """Transformer-level hook: takes (or follows) the step's decision, then runs the forward with the blocks hooked."""

    _is_stateful = True

    def __init__(self, config: SenCacheConfig, adapter: Adapter, scheduler: Any | None, mode: str = "eager",
                 compile_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.adapter = adapter
        self.scheduler = scheduler
        self.requested_mode = mode
        self.mode = mode  # the mode in use: "auto" until the first call resolves it; changes on a fallback
        self._graphs: OrderedDict[tuple, graph.CapturedCall] = OrderedDict()
        # dynamic=False: one static graph per latent shape. With automatic dynamic shapes, a recompilation turns
        # module float attributes such as RMSNorm eps into symbols, which torch.cond cannot guard on.
        self._compile_options = {"dynamic": False, **(compile_options or {})}
        options = self._compile_options.get("options") or {}
        self._cudagraph_trees = bool(options.get("triton.cudagraphs", self._compile_options.get("mode") in (
            "reduce-overhead", "max-autotune")))
        self._compiled: dict[tuple, Any] = {}
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
        step_inputs = None
        if sh.leader is None or name == sh.leader:
            step_inputs = self._start_step(ctx, x, t)
        if self.mode == "auto":
            self._resolve_auto(x)
        if self.mode == "graph":
            try:
                return self._forward_device(name, step_inputs, args, kwargs)
            except graph.GraphUnavailable as exc:
                self._fall_back(str(exc), "compiled" if self.requested_mode == "auto" else "eager")
        if self.mode == "compiled":
            first = sh.signature not in self._compiled
            try:
                return self._forward_device(name, step_inputs, args, kwargs)
            except Exception as exc:
                # auto: the first compiled call of a signature may fail to compile; the decision has not run then
                if self.requested_mode != "auto" or not first:
                    raise
                self._compiled.pop(sh.signature, None)
                self._fall_back(f"torch.compile failed ({type(exc).__name__}: {exc})", "eager")
        if step_inputs is not None:
            self._decide_eager(x, *step_inputs)
        cs: _ContextState = self.state_manager.get_state()
        if cs.epoch != sh.epoch:
            cs.reset()
            cs.epoch = sh.epoch
        compute = sh.compute or cs.residual is None or cs.residual[0].shape[0] != x.shape[0]
        if compute and sh.recorder is not None:
            sh.recorder.count_stack_call(True)
        sh.active = _Active(compute, cs=cs)
        try:
            return self.fn_ref.original_forward(*args, **kwargs)
        finally:
            sh.active = None

    def _resolve_auto(self, x: torch.Tensor) -> None:
        """``mode="auto"``: take graph mode where it can run, else compiled on CUDA, else eager."""
        if x.device.type != "cuda":
            self._fall_back(f"the latent is on {x.device}, where eager mode has no host sync or launch cost to "
                            "remove", "eager")
            return
        reason = graph.unavailable_reason(x)
        if reason is None:
            self.mode = "graph"
            logger.info("SenCache: mode='auto' runs in graph mode")
        else:
            self._fall_back(f"graph mode is unavailable: {reason}", "compiled")

    def _fall_back(self, reason: str, to: str) -> None:
        """Switch to mode ``to``: a log record under ``mode="auto"``, else one warning."""
        message = f"SenCache: {reason}; running in {to} mode instead (same outputs, only the speed differs)"
        if self.requested_mode == "auto":
            logger.info(message)
        else:
            warnings.warn(message, RuntimeWarning, stacklevel=5)
        self.mode = to

    def _forward_device(self, name: str, step_inputs: tuple | None, args: tuple, kwargs: dict) -> Any:
        """Compiled and graph modes: the decision, the skip and the forward in one compiled graph or CUDA graph."""
        sh = self.shared
        decide_inputs = None
        if step_inputs is not None:
            tb, eps, forced = step_inputs
            jx_now, jt_now = self.config.profile.lookup(tb, self.config.interpolation)
            sh.state.set_inputs(eps, forced)
            decide_inputs = (tb, jx_now, jt_now)
        if self.mode == "graph":
            cap, leaves = self._captured(name, decide_inputs, args, kwargs)
            must_compute = cap.epoch != sh.epoch
            out = graph.replay(cap, leaves, must_compute)
            cap.epoch = sh.epoch
        else:
            slot = sh.slots.setdefault(name, _DeviceSlot())
            must_compute = slot.must_compute = slot.residual is None or slot.epoch != sh.epoch
            sh.active = _Active(None, slot=slot)
            try:
                out = self.compiled_step(sh.signature)(decide_inputs, args, kwargs)
            finally:
                sh.active = None
            if self._cudagraph_trees:  # the next call's replay overwrites this output (CFG reads both)
                out = graph.clone_tensors(out)
            if slot.pending is not None:
                slot.adopt()
            slot.epoch = sh.epoch
        if sh.recorder is not None:
            if step_inputs is not None:  # one snapshot of the flag per step serves every context's record
                sh.step_flag = sh.state.flag.clone()
                sh.recorder.record(tb, sh.state.score, self._threshold(eps), forced, sh.step_flag)
            sh.recorder.count_stack_call(True if must_compute else sh.step_flag)
        return out

    def _captured(self, name: str, decide_inputs: tuple | None, args: tuple,
                  kwargs: dict) -> tuple[graph.CapturedCall, list[Any]]:
        """The captured graph of this call's signature (captured now if there is none for the current state), and the
        call's flattened inputs."""
        key, leaves = graph.signature_key(name, (decide_inputs, args, kwargs))
        cap = self._graphs.get(key)
        if cap is not None and cap.state is self.shared.state:
            return cap, leaves
        reason = graph.unavailable_reason(self.shared.state.x_ref)
        if reason is not None:
            raise graph.GraphUnavailable(reason)
        cap = graph.capture_call(self._traced, self._building, self.shared.state, decide_inputs, args, kwargs)
        self._graphs[key] = cap
        while len(self._graphs) > graph.MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return cap, leaves

    @contextlib.contextmanager
    def _building(self, building: Any) -> Any:
        self.shared.active = _Active(None, building=building)
        try:
            yield
        finally:
            self.shared.active = None

    def compiled_step(self, signature: tuple) -> Any:
        """The compiled step for one latent signature (shape, dtype, device, steps), compiled on first use.

        Each signature gets its own copy of ``_traced``'s code object, so torch.compile's cache (8 entries per code
        object) holds only that signature's variants (deciding or following context; first step of a call or not)
        and any number of resolutions, pipelines and applications stay within it.
        """
        fn = self._compiled.get(signature)
        if fn is None:
            f = SenCacheHook._traced
            copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
            fn = torch.compile(types.MethodType(copy, self), fullgraph=True, **self._compile_options)
            self._compiled[signature] = fn
        return fn

    def _traced(self, decide_inputs: tuple | None, args: tuple, kwargs: dict,
                state: DecisionState | None = None) -> Any:
        """The compiled (and captured) step: decision and reference update of ``state`` (default: the shared one;
        deciding context only), then the forward."""
        if decide_inputs is not None:
            x = _get_arg(args, kwargs, self.adapter.latent_arg, self._latent_pos)
            (self.shared.state if state is None else state).step(x, *decide_inputs,
                                                                 self.config.max_consecutive_skips)
        return self.fn_ref.original_forward(*args, **kwargs)

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

    def _start_step(self, ctx: tuple[str, int | None, int | None], x: torch.Tensor, t: Any) -> tuple:
        """Host bookkeeping of the deciding context's call: a new pipeline call?, the step index, the state for
        this latent, the step's tolerance and forcing. Returns ``(t per sample, eps, forced)``."""
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
            state_key = (tuple(x.shape), x.dtype, x.device)
            sh.state = sh.states.get(state_key)
            if sh.state is None:
                sh.state = sh.states[state_key] = DecisionState(x)
                for buf in sh.state.buffers():  # for compiled mode; graphs keep the addresses anyway
                    torch._dynamo.mark_static_address(buf)
                while len(sh.states) > graph.MAX_GRAPHS:
                    sh.states.popitem(last=False)
        eps = self.config.tolerance(step, num_steps)
        forced = step < self.force_first or step >= num_steps - self.force_last
        return tb, eps, forced

    def _threshold(self, eps: float) -> float:
        """``eps * sqrt(elements per sample)`` of the current call's latent, as the decision computes it."""
        return eps * math.sqrt(math.prod(self.shared.signature[0][1:]))

    def _decide_eager(self, x: torch.Tensor, tb: torch.Tensor, eps: float, forced: bool) -> None:
        sh = self.shared
        cfg = self.config
        jx_now, jt_now = cfg.profile.lookup(tb, cfg.interpolation)
        sh.state.decide(x, tb, jx_now, jt_now, eps, forced, cfg.max_consecutive_skips)
        flag = sh.state.read_flag()  # the one host read of an eager step
        if flag & NONFINITE and not sh.warned_nonfinite:
            sh.warned_nonfinite = True
            warnings.warn("SenCache: the latent contains NaN or Inf; such steps are always computed, never skipped. "
                          "Check the inputs and the model's dtype.", RuntimeWarning, stacklevel=4)
        sh.compute = bool(flag & COMPUTE)
        sh.recorder.record(tb, sh.state.score, self._threshold(eps), forced, sh.compute)

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
        if active.compute is None:  # on the device: the head runs the whole stack, the other blocks pass through
            carried = self._carried(args, kwargs)
            if self.is_head and active.building is not None:
                carried = active.building.stack(self, carried, args, kwargs)
            elif self.is_head:
                carried = self._stack_on_device(active.slot, carried, args, kwargs)
            return carried if self.adapter.blocks_update_encoder else carried[0]
        compute, cs = active.compute, active.cs
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

    def _carried(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        """The tensors the blocks carry from one to the next: ``(hidden,)`` or ``(hidden, encoder)``."""
        hidden = _get_arg(args, kwargs, "hidden_states", self._hidden_pos)
        if not self.adapter.blocks_update_encoder:
            return (hidden,)
        return hidden, _get_arg(args, kwargs, "encoder_hidden_states", self._encoder_pos)

    def _with_carried(self, args: tuple, kwargs: dict, carried: tuple) -> tuple[tuple, dict]:
        """The head block's arguments with the carried tensors replaced (every block takes the same others)."""
        args, kwargs = list(args), dict(kwargs)
        names = ("hidden_states", "encoder_hidden_states")
        for name, pos, value in zip(names, (self._hidden_pos, self._encoder_pos), carried, strict=False):
            if name in kwargs or pos is None or pos >= len(args):
                kwargs[name] = value
            else:
                args[pos] = value
        return tuple(args), kwargs

    def _run_stack(self, carried: tuple, args: tuple, kwargs: dict) -> tuple[torch.Tensor, ...]:
        for forward in self.shared.block_forwards:
            a, k = self._with_carried(args, kwargs, carried)
            out = forward(*a, **k)
            carried = tuple(out) if self.adapter.blocks_update_encoder else (out,)
        return carried

    def _stack_on_device(self, slot: _DeviceSlot, carried: tuple, args: tuple, kwargs: dict) -> tuple:
        """The block stack under ``torch.cond`` on the device flag, then the residual update of a computed step."""
        # The residual is looked at only when it may be used, so that the first step of every call traces (and
        # guards) the same way whether or not buffers exist from an earlier call.
        fits = not slot.must_compute
        if fits:
            res = slot.residual
            fits = res is not None and len(res) == len(carried) and all(
                r.shape == c.shape and r.dtype == c.dtype for r, c in zip(res, carried, strict=True))
        if not fits:  # no valid residual yet (first step of a call, or new shapes): compute, adopt it afterwards
            out = self._run_stack(carried, args, kwargs)
            slot.pending = tuple(o - c for o, c in zip(out, carried, strict=True))
            return out
        n = len(carried)
        flag = self.shared.state.flag
        # torch.cond refuses operands that alias each other; CogVideoX's two streams are slices of one tensor, so
        # the (small, text-length) encoder stream goes in as a copy.
        carried = carried[:1] + tuple(c.clone() for c in carried[1:])

        def compute(*ops: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self._run_stack(ops[:n], args, kwargs)

        def skip(*ops: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(c + r for c, r in zip(ops[:n], ops[n:], strict=True))

        out = torch.cond((flag & COMPUTE) != 0, compute, skip, carried + tuple(res))
        for o, c, r in zip(out, carried, res, strict=True):
            commit(flag, o, c, r)  # residual <- blocks_out - blocks_in, on computed steps only
        return tuple(out)


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
    transformer, scheduler = _split(target)
    adapter = get_adapter(transformer)
    config.profile.check_compatible(transformer, scheduler)
    if getattr(transformer, "_cache_config", None) is not None:
        raise ValueError("a diffusers cache is already enabled on this transformer; call "
                         "transformer.disable_cache() before apply_sencache")
    if _hook(transformer) is not None:
        remove_sencache(transformer)
    blocks = adapter.block_list(transformer)
    hook = SenCacheHook(config, adapter, scheduler, mode, compile_options)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(hook, _HOOK)
    for i, block in enumerate(blocks):
        block_hook = SenCacheBlockHook(hook.shared, adapter, is_head=i == 0, is_tail=i == len(blocks) - 1)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(block_hook, _BLOCK_HOOK)
        hook.shared.block_forwards.append(block_hook.fn_ref.original_forward)
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
