"""SenCache under diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(...))``,
launched with ``torchrun``): the same decision on every rank of the group.

diffusers splits the token sequence across the ranks with hooks taken from the model's ``_cp_plan``: at the
transformer's input (LTX-Video, Flux) or at the first block (Wan), and gathers the output at ``proj_out``. Every rank
runs the same denoising loop on its shard, so every rank must take the same decision: a rank that skips the block
stack while another runs it leaves the other waiting in the stack's collectives. Whatever the order of
``apply_sencache`` and ``enable_parallelism``:

- the block-stack hooks sit inside the split (:func:`register_inside`), so each rank runs, caches and reuses the
  residual of its own shard;
- where SenCache's transformer hook sees the whole latent (the split comes later, as in Wan), the decision is the
  one-process decision;
- where the latent arrives split (SenCache's hook inside a split of the transformer's input), :class:`ParallelState`
  all-reduces each sample's squared drift over the group and compares with the whole latent's element count, so the
  score is the one-process score up to the order of summation;
- a guard: the decision flag is replaced by its MAX over the group before it is read (eager) or used (compiled), one
  integer per step, so ranks that disagree all compute instead of hanging.

Graph mode is unavailable under context parallelism (:func:`graph_reason`); compiled and eager modes run.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.hooks import context_parallel as cp_hooks

from sencache import plumbing
from sencache_kernels import COMPUTE, NONFINITE, DecisionState, commit, decide

# the names diffusers registers its context-parallel hooks under: "cp_input---<module>" (split), "cp_output---<module>"
CP_HOOKS = (cp_hooks._CONTEXT_PARALLEL_INPUT_HOOK_TEMPLATE.format(""),
            cp_hooks._CONTEXT_PARALLEL_OUTPUT_HOOK_TEMPLATE.format(""))
logger = logging.getLogger("sencache")


@dataclass(frozen=True)
class Layout:
    """How a transformer call's latent lies across the context-parallel group, as SenCache's hook sees it."""

    group: Any  # the group's ProcessGroup (every rank of the ring x Ulysses mesh)
    split: bool  # the latent arrives split (each rank holds a shard)
    elements: int  # elements per sample of the whole latent


def context_parallel(transformer: torch.nn.Module) -> Any | None:
    """The transformer's ``ContextParallelConfig`` where ``enable_parallelism`` set one, else None."""
    return getattr(getattr(transformer, "_parallel_config", None), "context_parallel_config", None)


def layout(transformer: torch.nn.Module, x: torch.Tensor, hook_name: str, latent_arg: str) -> Layout | None:
    """The latent's layout for the hook ``hook_name`` on ``transformer`` (None without context parallelism): split
    where a context-parallel hook registered outside it splits ``latent_arg``. Called once per pipeline call; a split
    latent costs one all-reduce of its element count (the shards may differ in size)."""
    config = context_parallel(transformer)
    if config is None:
        return None
    _traceable(transformer)
    group = config._flattened_mesh.get_group()
    registry = getattr(transformer, "_diffusers_hook", None)
    order = registry._hook_order if registry is not None else []
    outer = order[order.index(hook_name) + 1:] if hook_name in order else []
    split = any(_splits(registry.hooks[name], latent_arg, x) for name in outer if name.startswith(CP_HOOKS[0]))
    elements = math.prod(x.shape[1:])
    if split:
        count = torch.tensor([elements], dtype=torch.int64, device=x.device)
        torch.distributed.all_reduce(count, group=group)
        elements = int(count)
    return Layout(group, split, elements)


def _traceable(transformer: torch.nn.Module) -> None:
    """Let compiled mode trace diffusers' split hooks: each looks up where its arguments sit with ``inspect`` on its
    first call, and some log a one-time warning (Wan's 1-D timestep, which they leave whole), neither of which
    torch.compile(fullgraph=True) can trace. The lookup is done here, on the host, and tracing skips that logger's call
    (eager calls still log it)."""
    warn = getattr(cp_hooks.logger, "warning_once", None)  # set on loggers by transformers, where it is imported
    if warn is not None:
        torch._dynamo.config.ignore_logging_functions.add(warn)
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        for name, hook in (registry.hooks.items() if registry is not None else ()):
            meta = getattr(hook, "module_forward_metadata", None)
            if name.startswith(CP_HOOKS[0]) and meta is not None and meta.cached_parameter_indices is None:
                names = list(inspect.signature(meta._cls.forward).parameters)[1:]  # without self
                meta.cached_parameter_indices = {n: i for i, n in enumerate(names)}


def _splits(hook: Any, arg: str, x: torch.Tensor) -> bool:
    """Whether diffusers' split hook ``hook`` splits the input ``arg`` (a tensor like ``x``)."""
    plan = getattr(hook, "metadata", {}).get(arg)
    return (plan is not None and not getattr(plan, "split_output", True)
            and getattr(plan, "expected_dims", None) in (None, x.dim()))


def register_inside(module: torch.nn.Module, hook: Any, name: str) -> None:
    """Register ``hook`` on ``module`` below the context-parallel hooks already there (they, and the hooks registered
    after them, are taken off and registered again above it), so that it sees what they split."""
    registry = plumbing.registry(module)
    order = registry._hook_order
    first = next((i for i, n in enumerate(order) if n.startswith(CP_HOOKS)), len(order))
    lifted = [(n, registry.hooks[n]) for n in order[first:]]
    for n, _ in reversed(lifted):
        registry.remove_hook(n, recurse=False)
    registry.register_hook(hook, name)
    for n, h in lifted:
        registry.register_hook(h, n)


def graph_reason(state: DecisionState) -> str | None:
    """Why graph mode cannot run with ``state``, or None."""
    if isinstance(state, ParallelState):
        return ("the transformer runs with context parallelism: its block stack holds the group's collectives "
                "(all-to-all, all-gather), which a conditional CUDA-graph body cannot hold")
    return None


def _sqrt_f32(n: int) -> np.float32:
    """float32 ``sqrt(float32(n))``, as the decide op computes it for its threshold."""
    return np.float32(math.sqrt(float(np.float32(n))))


class ParallelState(DecisionState):
    """The decision state of one rank under context parallelism (see the module docstring).

    With a split latent, ``shard_ref`` holds this rank's shard of the reference, and the decide op runs on the
    per-sample drift ``sqrt(all_reduce(||x - shard_ref||^2))`` as a ``[B, 1]`` latent against the zero ``x_ref``, with
    the tolerance buffer holding ``eps * sqrt(elements)`` (rounded as the op rounds its threshold): the op's threshold
    is then the one-process threshold bit for bit.

    Args:
        like: this rank's latent (its shard where split).
        layout: the latent's :class:`Layout`.
    """

    def __init__(self, like: torch.Tensor, layout: Layout) -> None:
        super().__init__(like.new_zeros((like.shape[0], 1), dtype=torch.float32) if layout.split else like)
        self.layout = layout
        self.root_n = _sqrt_f32(layout.elements)
        self._pending: tuple = ()  # the eager decision's inputs, for a forced decision where another rank computes
        self._warned = False
        if layout.split:
            self.register_buffer("shard_ref", torch.zeros_like(like))

    def set_inputs(self, eps: float, force: bool) -> None:
        super().set_inputs(float(np.float32(eps) * self.root_n) if self.layout.split else eps, force)
        self._inputs = (eps, force)

    def drift(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample ``||x - x_ref||`` of the whole latent, from this rank's shard: float32 ``[B, 1]``."""
        from torch.distributed import _functional_collectives as funcol

        diff = x.to(torch.float32) - self._buffers["shard_ref"].to(torch.float32)
        squares = diff.reshape(x.shape[0], -1).square().sum(dim=1)
        return funcol.all_reduce(squares, "sum", self.layout.group).sqrt().unsqueeze(1)

    def agreed(self, flag: torch.Tensor) -> torch.Tensor:
        """The group's MAX of ``flag``: COMPUTE where any rank computes."""
        from torch.distributed import _functional_collectives as funcol

        return funcol.all_reduce(flag, "max", self.layout.group)

    def decide(self, x: torch.Tensor, t: torch.Tensor, jx_now: torch.Tensor, jt_now: torch.Tensor, eps: float,
               force: bool, max_skips: int, score: torch.Tensor | None = None) -> int:
        """The eager step (``DecisionState.decide``) on the group's drift, with the guard in ``read_flag``."""
        if not self.layout.split:
            self._pending = (x, t, jx_now, jt_now, max_skips, score)
            return super().decide(x, t, jx_now, jt_now, eps, force, max_skips, score)
        d = self.drift(x)
        self._pending = (d, t, jx_now, jt_now, max_skips, score)
        flag = super().decide(d, t, jx_now, jt_now, eps, force, max_skips, score)
        if flag & COMPUTE:
            self._buffers["x_ref"].zero_()  # the drift is measured from the shard reference, never from x_ref
            self._buffers["shard_ref"].copy_(x)
        return flag

    def read_flag(self) -> int:
        """The guard and the step's one host read: where another rank computes, this one computes too, its state
        updated as on a forced step."""
        flag = self._buffers["flag"]
        local, agreed = torch.stack((flag, self.agreed(flag))).tolist()
        if agreed & COMPUTE and not local & COMPUTE:
            self._overrule()
        return (agreed & COMPUTE) | (local & NONFINITE)

    def _overrule(self) -> None:
        x, t, jx_now, jt_now, max_skips, score = self._pending
        b = self._buffers
        b["force"].fill_(True)
        self._inputs = None  # the next step fills its own forcing
        torch.ops.sencache.decide(x, t, jx_now, jt_now, b["eps"], b["force"], b["x_ref"], b["t_ref"], b["jx_ref"],
                                  b["jt_ref"], b["skips"], b["flag"], b["score"] if score is None else score,
                                  b["ticket"], max_skips)
        if not self._warned:
            self._warned = True
            logger.warning("SenCache: the ranks of the context-parallel group took different decisions for a step; "
                           "every rank computes such steps. Give every rank the same SenCacheConfig, profile and "
                           "inputs.")

    def step(self, x: torch.Tensor, t: torch.Tensor, jx_now: torch.Tensor, jt_now: torch.Tensor,
             max_skips: int) -> None:
        """The compiled step (``DecisionState.step``) on the group's drift, its flag replaced by the group's MAX
        before the reference update (a rank overruled this way keeps its reference timestep and skip count)."""
        split = self.layout.split
        decide(self.drift(x) if split else x, t, jx_now, jt_now, self.eps, self.force, self.x_ref, self.t_ref,
               self.jx_ref, self.jt_ref, self.skips, self.flag, self.score, self.ticket, max_skips)
        self.flag.copy_(self.agreed(self.flag))
        commit(self.flag, x, None, self.shard_ref if split else self.x_ref)
