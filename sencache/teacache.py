"""TeaCache for Wan transformers, written from its published algorithm (Liu et al., CVPR 2025) as a baseline.

Per denoising call (context ``"cond"`` / ``"uncond"``, each with its own state): take the timestep-modulated input
of block 0, ``m = norm1(h) * (1 + scale) + shift``; accumulate ``poly(mean|m - m_prev| / mean|m_prev|)``, where the
polynomial maps the input change to the change of the transformer's output and is fitted on the model
(:func:`fit_coefficients`); skip the block stack (add the cached residual) while the sum stays below the threshold,
otherwise compute and reset the sum. The first and the last step are always computed; there is no cap on
consecutive skips (as published). Sensitivity view: only the ``Jt`` term of SenCache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.hooks.hooks import BaseState, ModelHook, StateManager

from sencache import plumbing
from sencache.parallel import context_parallel
from sencache.stack import BlockStack

__all__ = ["TeaCacheConfig", "apply_teacache", "fit_coefficients", "modulated_input", "remove_teacache"]

_HOOK = "teacache"
_BLOCK_HOOK = "teacache_block"


@dataclass
class TeaCacheConfig:
    """Args:
    threshold: accumulated rescaled change below which the block stack is skipped (higher: fewer computed steps).
    coefficients: polynomial coefficients, highest degree first (``numpy.polyval`` order).
    num_inference_steps: steps per pipeline call (the first and last are computed).
    """

    threshold: float
    coefficients: Sequence[float]
    num_inference_steps: int = 50


def modulated_input(block: torch.nn.Module, hidden: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """The input of a ``WanTransformerBlock``'s self-attention: ``norm1(h) * (1 + scale_msa) + shift_msa``."""
    if temb.ndim == 4:  # per-token modulation (Wan 2.2 TI2V)
        shift, scale = (block.scale_shift_table.unsqueeze(0) + temb.float()).chunk(6, dim=2)[:2]
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (block.scale_shift_table + temb.float()).chunk(6, dim=1)[:2]
    return block.norm1(hidden.float()) * (1 + scale) + shift


def _rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12))


class _State(BaseState):
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.accumulated = 0.0
        self.previous: torch.Tensor | None = None
        self.residual: tuple[torch.Tensor, ...] | None = None


class _TeaCacheHook(ModelHook):
    """Transformer-level hook: runs the forward while the block stack asks :meth:`replace_stack` for its output."""

    _is_stateful = True

    def __init__(self, config: TeaCacheConfig, stack: BlockStack) -> None:
        super().__init__()
        self.state_manager = StateManager(_State)
        self.config = config
        self.stack = stack
        self.args = plumbing.Args(type(stack.blocks[0]).forward, "temb")

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """Called by the pipeline at the end of every call: the next call starts from step 0."""
        self.state_manager.reset()
        return module

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if context_parallel(module) is not None:  # each rank would decide on its own shard: ranks could hang
            raise ValueError("the TeaCache baseline does not run under context parallelism (its decision would differ "
                             "between ranks); run it in one process, or use sencache.apply_sencache")
        if self.state_manager._context is None:
            raise RuntimeError("TeaCache needs the pipeline's cache_context (call the transformer through a diffusers "
                               "pipeline, or wrap the call in transformer.cache_context('cond'))")
        with self.stack.running(self):
            return self.fn_ref.original_forward(*args, **kwargs)

    def replace_stack(self, carried: tuple, args: tuple, kwargs: dict) -> tuple:
        st: _State = self.state_manager.get_state()
        temb = self.args.get(args, kwargs, "temb")
        compute = self._decide(st, modulated_input(self.stack.blocks[0], carried[0], temb))
        st.step = (st.step + 1) % self.config.num_inference_steps
        if not compute:
            return self.stack.skip(carried, st.residual)
        out = self.stack.run(carried, args, kwargs)
        st.residual = self.stack.residual(out, carried)
        return out

    def _decide(self, st: _State, m: torch.Tensor) -> bool:
        n = self.config.num_inference_steps
        edge = st.step == 0 or st.step >= n - 1 or st.previous is None or st.residual is None
        if edge or st.previous.shape != m.shape:
            compute, st.accumulated = True, 0.0
        else:
            st.accumulated += float(np.polyval(self.config.coefficients, _rel_l1(m, st.previous)))
            compute = st.accumulated >= self.config.threshold
            if compute:
                st.accumulated = 0.0
        st.previous = m
        return compute


def apply_teacache(transformer: torch.nn.Module, config: TeaCacheConfig) -> None:
    """Hook TeaCache into a ``WanTransformer3DModel`` (its ``blocks``); undo with :func:`remove_teacache`."""
    blocks = getattr(transformer, "blocks", None)
    if type(transformer).__name__ != "WanTransformer3DModel" or not isinstance(blocks, torch.nn.ModuleList):
        raise ValueError(f"this TeaCache baseline supports WanTransformer3DModel, got {type(transformer).__name__}")
    if len(config.coefficients) == 0 or config.num_inference_steps < 2:
        raise ValueError("TeaCacheConfig needs polynomial coefficients and num_inference_steps >= 2")
    stack = BlockStack(blocks, hook_name=_BLOCK_HOOK)
    plumbing.registry(transformer).register_hook(_TeaCacheHook(config, stack), _HOOK)
    stack.attach()
    plumbing.invalidate(transformer)


def remove_teacache(transformer: torch.nn.Module) -> None:
    """Remove the hooks of :func:`apply_teacache` (no-op where there are none)."""
    hook = plumbing.find_hook(transformer, _HOOK)
    if hook is not None:
        plumbing.remove_hook(transformer, _HOOK)
        hook.stack.detach()
    plumbing.invalidate(transformer)


def fit_coefficients(pipe: Any, calls: Sequence[dict], degree: int = 4) -> list[float]:
    """Fit TeaCache's polynomial on ``pipe``'s own uncached trajectories.

    For every pair of consecutive steps of each context, ``x`` is the relative L1 change of block 0's modulated
    input and ``y`` that of the transformer's output; returns ``numpy.polyfit(x, y, degree)`` (highest degree first).

    Args:
        pipe: a pipeline with a ``WanTransformer3DModel`` (no cache applied).
        calls: keyword arguments of each pipeline call to record (condition, generator, steps, ...).
        degree: polynomial degree (TeaCache uses 4).
    """
    transformer = pipe.transformer
    head = transformer.blocks[0]
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def on_head(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        temb = kwargs.get("temb", args[2] if len(args) > 2 else None)
        inputs.append(modulated_input(module, hidden, temb).detach())

    def on_output(module: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        outputs.append((out[0] if isinstance(out, tuple) else out.sample).detach().float())

    handles = [head.register_forward_pre_hook(on_head, with_kwargs=True),
               transformer.register_forward_hook(on_output, with_kwargs=True)]
    xs, ys = [], []
    try:
        for kwargs in calls:
            inputs.clear()
            outputs.clear()
            pipe(**kwargs)
            contexts = 2 if len(inputs) == 2 * kwargs["num_inference_steps"] else 1
            for c in range(contexts):  # calls alternate cond / uncond under CFG
                ins, outs = inputs[c::contexts], outputs[c::contexts]
                for k in range(1, len(ins)):
                    xs.append(_rel_l1(ins[k], ins[k - 1]))
                    ys.append(_rel_l1(outs[k], outs[k - 1]))
    finally:
        for h in handles:
            h.remove()
    if len(xs) <= degree:
        raise ValueError(f"need more than {degree} step pairs to fit a degree-{degree} polynomial, got {len(xs)}")
    return np.polyfit(np.asarray(xs), np.asarray(ys), degree).tolist()
