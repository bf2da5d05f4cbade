"""The step clock: the host bookkeeping of the pipeline calls one transformer takes part in.

The first context to call the transformer in a pipeline call (Wan's "cond"; the only one under batched CFG) leads:
each of its calls is a new denoising step, for which the clock works out whether a new pipeline call began, the step
index, the step's tolerance and forcing, and which decision state (one per latent signature, kept across calls) the
decision updates. The other contexts (Wan's "uncond") follow the leader's decision. The clock also keeps the
statistics of the last calls, on the device until they are asked for.

Where a step sits comes from the call in flight, never from state captured at apply time, in this order: the
``step_index`` / ``num_inference_steps`` of the cache context (``transformer.cache_context(name, step_index=i,
num_inference_steps=n)``); else the timestep itself when it is a view of one entry of a 1-D schedule (what the
pipelines pass, ``timesteps[i].expand(B)``: its base is the schedule of the call in flight, its offset the step);
else counting calls against the step count of the pipeline in flight or of the config. A second call of a context
within one step (an integrator's loop calling the transformer again at the same latent and timestep with other
inputs) is a context of its own, ``name#k``, that follows the step's decision with its own residual.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from typing import Any, NamedTuple

import torch

from sencache import plumbing
from sencache.config import SenCacheConfig
from sencache.parallel import Layout, ParallelState
from sencache.stats import StatsRecorder
from sencache_kernels import DecisionState

MAX_HISTORY = 64  # pipeline calls whose statistics are kept
MAX_STATES = 8  # latent signatures whose decision states are kept; the oldest is dropped beyond


class Step(NamedTuple):
    """What the leading context's call decides with (a named tuple: one is made per step, cheaper than a dataclass)."""

    index: int
    x: torch.Tensor  # the latent
    t: torch.Tensor  # the timestep per sample, float32 [B] on the latent's device
    jx: torch.Tensor  # Jx(t) and Jt(t) of the profile, float32 [B]
    jt: torch.Tensor
    eps: float
    forced: bool
    state: DecisionState
    threshold: float  # eps * sqrt(elements per sample), as the decision compares the scores with it


def view_entry(t: Any) -> tuple[torch.Tensor | None, int | None]:
    """``(schedule, index)`` when ``t`` is a view of one entry of a 1-D tensor (a scalar entry, or one entry
    broadcast per sample), else ``(None, None)``."""
    root = getattr(t, "_base", None)
    if root is None or root.dim() != 1 or (t.numel() != 1 and any(t.stride())):
        return None, None
    stride = root.stride(0)
    if stride <= 0:
        return None, None
    k, r = divmod(t.data_ptr() - root.data_ptr(), stride * root.element_size())
    return (root, k) if r == 0 and 0 <= k < root.shape[0] else (None, None)


class _Schedule:
    """The per-sample timestep and its ``(Jx, Jt)`` for every entry of the scheduler's ``timesteps``, made once per
    pipeline call. A transformer call whose timestep is a view of one entry (the pipelines pass
    ``timesteps[i].expand(B)``) takes that entry's row instead of a profile lookup, a handful of small ops per step.
    The rows equal the lookup's results exactly: the lookup is elementwise, and the row is read from the same memory
    (the tensor's version counter tells an in-place change; inference tensors have none, so under
    ``torch.inference_mode`` every step looks its values up)."""

    def __init__(self, timesteps: torch.Tensor, b: int, config: SenCacheConfig) -> None:
        self.timesteps, self.version, self.b = timesteps, timesteps._version, b
        self.root = timesteps if timesteps._base is None else timesteps._base  # what views of it name as their base
        tf = timesteps.to(torch.float32)
        jx, jt = config.profile.lookup(tf, config.interpolation)
        table = torch.stack([tf, jx, jt]).unsqueeze(-1).expand(3, len(tf), b).contiguous()
        self.rows = list(zip(*(c.unbind(0) for c in table.unbind(0)), strict=True))  # four ops for the whole table
        self.base, self.step = timesteps.data_ptr(), timesteps.stride(0) * timesteps.element_size()

    def row(self, t: Any, x: torch.Tensor, entry: tuple | None = None) -> tuple[torch.Tensor, ...] | None:
        """``(t, Jx, Jt)`` per sample when ``t`` is a view of one entry (``entry``: ``view_entry(t)`` where known),
        else None. (A view shares the memory, so the device, of ``timesteps``, which the clock checked against the
        latent's once per call.)"""
        if entry is None:
            entry = view_entry(t) if isinstance(t, torch.Tensor) else (None, None)
        root, k = entry
        ts = self.timesteps
        if (root is not self.root or t.dtype != ts.dtype or ts._version != self.version or x.shape[0] != self.b
                or (t.numel() != 1 and t.shape[0] != self.b)):  # another batch size: the lookup path raises there
            return None
        return self.rows[k]


class StepClock:
    """Host bookkeeping of one transformer's pipeline calls (see the module docstring).

    Args:
        config: the SenCache configuration (tolerances, forced steps, the step count of a bare transformer).
        pipeline: the pipeline SenCache was applied to (kept weakly; its scheduler is read when a call needs it), or
            None.
        force_first, force_last: steps computed at the start and the end whatever the score.
        probe: ``probe(transformer, latent)``, the latent's context-parallel ``Layout`` (None without), asked once per
            pipeline call.
    """

    def __init__(self, config: SenCacheConfig, pipeline: Any | None, force_first: int, force_last: int,
                 probe: Any = None) -> None:
        self.config = config
        self.probe = probe
        self.applied_to = None if pipeline is None else weakref.ref(pipeline)
        self.force_first, self.force_last = force_first, force_last
        self.call = 0  # counts pipeline calls: a residual is valid only within the call that made it
        self.history: list[StatsRecorder] = []
        self.states: OrderedDict[tuple, DecisionState] = OrderedDict()
        self.state: DecisionState | None = None
        self.state_key: tuple | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the running call (the next leading call starts a new one)."""
        self.call += 1
        self.leader: str | None = None
        self.step = -1
        self.num_steps = 0
        self.shape: torch.Size | None = None  # the running call's latent
        self.dtype: torch.dtype | None = None
        self.device: torch.device | None = None
        self.signature: tuple | None = None  # (shape, dtype, device, steps) of the running call
        self.timesteps_obj: Any = None  # the running call's scheduler.timesteps, when its timestep is no view
        self.root: torch.Tensor | None = None  # the schedule the running call's timesteps are views of
        self.pipeline: Any = None  # the pipeline running the call, found when it began (weakly), or None
        self.last: tuple = ()  # the leading call's latent and timestep, and their versions: a repeat has the same
        self.memo: tuple = (None, None, None)  # (timestep, its version, view_entry(timestep)) of the last call
        self.calls: dict[str, int] = {}  # calls per context in the current step
        self.seen: set[str] = set()  # the contexts of the running call
        self.compute = True  # the last decision, where it was read on the host (eager mode)
        self.flag: torch.Tensor | None = None  # a copy of the last decision flag, where it stays on the device
        self.warned_nonfinite = False
        self.recorder: StatsRecorder | None = None
        self.schedule: _Schedule | None = None

    def enter(self, module: torch.nn.Module, name: str, x: torch.Tensor, t: Any, step_index: int | None,
              ctx_steps: int | None) -> tuple[str, Step | None]:
        """A call of context ``name`` with latent ``x`` at timestep ``t``: the context it runs as, and the step it
        starts (None for a call that follows the step's decision: another context, or a repeat within the step)."""
        leader = self.leader
        if leader is None or name == leader or step_index is None or step_index < self.step:
            # not the common following call (Wan's "uncond" told its step): where the timestep sits tells more
            memo = self.memo  # view_entry of the last timestep seen: a following call passes the leading call's
            if t is memo[0] and (memo[1] is None or t._version == memo[1]):  # _version(t) == memo[1], inlined
                root, k = memo[2]
            else:
                root, k = entry = view_entry(t)
                self.memo = (t, t._version if isinstance(t, torch.Tensor) and not t.is_inference() else None, entry)
            known = ctx_steps or self.config.num_inference_steps
            if root is not None and known and len(root) != known:  # a view of some other table, not the schedule
                root = k = None
            index = step_index if step_index is not None else k
            if name != leader:  # another context begins a new pipeline call when it runs another call's schedule or
                begins = leader is None or (root is not None and root is not self.root) or (  # an earlier step, or
                    index < self.step if index is not None  # (its step untold) is new after the last step
                    else 1 < self.num_steps <= self.step + 1 and name not in self.seen)
            else:  # the leader starts the next step, unless it repeats the current one (same step, same latent)
                begins = not ((index is None or index == self.step) and self._repeats(x, t, index, root))
            if begins:
                step = self.tick(module, name, x, t, index, ctx_steps, (root, k))
                self.calls = {name: 1}  # after the tick, which resets it when a new pipeline call begins
                self.seen.add(name)
                return name, step
        # A call that follows the step's decision: as ``name``, or as ``name#k`` for its k-th repeat within the step.
        self.seen.add(name)
        k = self.calls.get(name, 0)
        self.calls[name] = k + 1
        return (name if k == 0 else f"{name}#{k}"), None

    def tick(self, module: torch.nn.Module, name: str, x: torch.Tensor, t: Any, index: int | None,
             ctx_steps: int | None, entry: tuple) -> Step:
        """Start the step of the leading context's call (``index``: the step, where the call tells it; ``entry``:
        ``view_entry(t)``, or ``(None, None)`` where ``t`` is no view of the schedule)."""
        root, t_version = entry[0], self.memo[1]  # t's version: enter's memo holds it (a new call resets the memo)
        if (self.leader != name or x.shape != self.shape or x.dtype != self.dtype or x.device != self.device
                or (ctx_steps and ctx_steps != self.num_steps) or (root is not None and root is not self.root)
                or (index is not None and (index <= self.step or index >= self.num_steps))
                or (index is None and (self.step + 1 >= self.num_steps
                                       or self._timesteps() is not self.timesteps_obj))):
            tb = per_sample_timestep(t, x)  # validates before any state changes
            pipeline = plumbing.pipeline_in_flight(module)
            scheduler = getattr(pipeline, "scheduler", None)
            num_steps = ctx_steps or (len(root) if root is not None else self._num_steps(scheduler))
            self.config.profile.check_scheduler(scheduler)
            if index is not None and index >= num_steps:
                raise ValueError(f"SenCache: step index {index} of a generation of {num_steps} steps")
            self._start_call(name, x, int(num_steps), root, pipeline, self.probe and self.probe(module, x))
            first = True  # the first step this transformer sees in a call (Wan 2.2's second expert: mid-call)
            if root is not None and not root.is_inference() and root.device == x.device:
                self.schedule = _Schedule(root, x.shape[0], self.config)  # once per call, for this call's latent
        else:
            tb, first = None, False
        cfg = self.config
        row = self.schedule.row(t, x, entry) if self.schedule is not None else None
        if row is None:  # a copy off the table: the statistics keep it, and it may be a view of the caller's t
            tb = (per_sample_timestep(t, x) if tb is None else tb).clone()
            jx, jt = cfg.profile.lookup(tb, cfg.interpolation)
        else:
            tb, jx, jt = row
        self.step = step = self.step + 1 if index is None else int(index)
        self.last = (x, None if x.is_inference() else x._version, t, t_version)  # _version(x), inlined
        num_steps = self.num_steps
        eps = cfg.tolerance(step, num_steps)
        forced = first or step < self.force_first or step >= num_steps - self.force_last
        return Step(step, x, tb, jx, jt, eps, forced, self.state, eps * self.root_n)

    def _repeats(self, x: torch.Tensor, t: Any, index: int | None, root: torch.Tensor | None) -> bool:
        """Whether a leading call is the current step again (same step, same latent) rather than the next step."""
        lx, lxv, lt, ltv = self.last
        if index is not None:  # the call tells its step
            return index == self.step and (root is None or root is self.root) and _same(x, lx, lxv)
        if self.pipeline is not None:  # a pipeline's own loop: the identity tells, no host read
            return x is lx and _version(x) == lxv and t is lt
        return _same(t, lt, ltv) and _same(x, lx, lxv)

    def _start_call(self, leader: str, x: torch.Tensor, num_steps: int, root: torch.Tensor | None,
                    pipeline: Any, cp: Layout | None = None) -> None:
        self.reset()
        self.leader, self.num_steps, self.root = leader, num_steps, root
        self.pipeline = None if pipeline is None else weakref.ref(pipeline)
        self.timesteps_obj = self._timesteps()
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        # sqrt(elements per sample) of the call's latent (the whole latent's where context parallelism split it)
        self.root_n = math.sqrt(math.prod(x.shape[1:]) if cp is None else cp.elements)
        key = (tuple(x.shape), x.dtype, x.device)  # a call keeps one latent shape, dtype and device: its state
        self.signature = (*key, num_steps)
        key = key if cp is None else (*key, cp)
        if self.state is None or self.state_key != key:
            self.state, self.state_key = self._state_for(key, x, cp), key
        self.recorder = StatsRecorder(num_steps, root)
        self.history.append(self.recorder)
        del self.history[:-MAX_HISTORY]

    def _state_for(self, key: tuple, x: torch.Tensor, cp: Layout | None) -> DecisionState:
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = DecisionState(x) if cp is None else ParallelState(x, cp)
            for buf in state.buffers():  # static inputs of the compiled step; captured graphs keep them anyway
                torch._dynamo.mark_static_address(buf)
            while len(self.states) > MAX_STATES:
                self.states.popitem(last=False)
        return state

    def _timesteps(self) -> Any:
        """The ``scheduler.timesteps`` of the pipeline running the call (a new object in every pipeline call)."""
        pipeline = self.pipeline() if self.pipeline is not None else None
        return getattr(getattr(pipeline, "scheduler", None), "timesteps", None)

    def _num_steps(self, scheduler: Any | None) -> int:
        ts = getattr(scheduler, "timesteps", None)
        if ts is not None:
            return len(ts)
        if self.config.num_inference_steps is not None:
            return self.config.num_inference_steps
        where = "outside a pipeline call" if self.applied_to is not None else "on a bare transformer"
        raise ValueError(f"SenCache does not know the number of denoising steps of this call ({where}): call the "
                         "transformer within transformer.cache_context(name, step_index=i, num_inference_steps=n), "
                         "set SenCacheConfig(num_inference_steps=...), or apply SenCache to the pipeline")

    # ------------------------------------------------------------------------------------------------ statistics
    def record(self, step: Step, flag: torch.Tensor) -> None:
        """The leading call's decision in a device mode: snapshots of the device flag and of the state's scores, read
        when the statistics are asked for. (Eager mode records into ``recorder`` itself: the flag it read on the host,
        the scores in a row of the call's table.)"""
        self.flag = flag.clone()
        self.recorder.record(step.t, step.state.score.clone(), step.threshold, step.forced, self.flag)

    def count_stack_call(self, computed: bool | torch.Tensor) -> None:
        """One context's call: whether it ran the block stack (a bool, or the step's flag snapshot)."""
        if self.recorder is not None:
            self.recorder.stack_calls.append(computed)


def _version(v: Any) -> int | None:
    return v._version if isinstance(v, torch.Tensor) and not v.is_inference() else None


def _same(a: Any, b: Any, b_version: int | None) -> bool:
    """Whether ``a`` holds the values ``b`` held when its version was ``b_version`` (a tensor's values are compared
    only where the identity does not tell: one host read on a device)."""
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return a == b
    if isinstance(b, torch.Tensor) and _version(b) != b_version:  # changed in place since
        return False
    if a is b:
        return True
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)


def per_sample_timestep(t: Any, x: torch.Tensor) -> torch.Tensor:
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
