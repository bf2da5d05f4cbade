"""Per-architecture adapters: what differs between transformers, as data, one small file per model family.

An adapter names the module list(s) that form the block stack, how the pipeline runs guidance, and which steps are
forced by default; what the blocks return is taken from diffusers' own block metadata. Register one with
``@register`` on a function returning an ``Adapter`` (see ``wan.py``; ``flux.py`` for two block lists).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sencache.stack import BlockStack

GUIDANCE = ("separate", "batched", "distilled")


@dataclass(frozen=True)
class Adapter:
    """How SenCache hooks one transformer class.

    Args:
        model_class: the transformer's class name, e.g. ``"WanTransformer3DModel"``.
        blocks: the attribute(s) of the transformer holding its block ``ModuleList`` s, in the order its forward
            runs them; together they form one block stack, run or skipped as a whole. Where each block returns its
            streams comes from diffusers' block metadata (``TransformerBlockRegistry``).
        guidance: how the pipeline runs guidance: ``"separate"`` (one call per branch, in
            ``cache_context("cond")`` / ``("uncond")``), ``"batched"`` (one call on ``[uncond, cond]``, the cond
            half second) or ``"distilled"`` (one call with the guidance embedded; a negative prompt with true CFG
            adds a call in ``cache_context("uncond")``, which follows the cond call's decision).
        force_first_steps: steps computed at the start by default (at least 1).
        force_last_steps: steps computed at the end by default.
        latent_arg: the transformer's argument holding the noisy latent ``x``.
        timestep_arg: the transformer's argument holding the timestep ``t``.
        timestep_scale: the transformer receives the scheduler's timestep times this (Flux, Qwen-Image: 1/1000);
            profiles are in the transformer's units.
        uncacheable_args: transformer arguments that change the streams between blocks (ControlNet residuals,
            skipped layers): a call that passes one raises a clear error rather than caching wrongly.
        optional_blocks: block lists that may be empty in a given config (at least one list must have blocks).
        block_outputs: ``((block class name, (hidden index, encoder index or None)), ...)`` for block classes
            without diffusers metadata.
    """

    model_class: str
    blocks: str | tuple[str, ...]
    guidance: str
    force_first_steps: int = 1
    force_last_steps: int = 0
    latent_arg: str = "hidden_states"
    timestep_arg: str = "timestep"
    optional_blocks: tuple[str, ...] = ()
    timestep_scale: float = 1.0
    uncacheable_args: tuple[str, ...] = ()
    block_outputs: tuple[tuple[str, tuple[int, int | None]], ...] = ()

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCE:
            raise ValueError(f"Adapter.guidance must be one of {GUIDANCE}, got {self.guidance!r}")

    @property
    def batched_cfg(self) -> bool:
        return self.guidance == "batched"

    @property
    def block_attrs(self) -> tuple[str, ...]:
        return (self.blocks,) if isinstance(self.blocks, str) else tuple(self.blocks)

    def block_lists(self, transformer: torch.nn.Module) -> list[torch.nn.ModuleList]:
        """The block lists of ``transformer`` that form its stack (empty optional ones left out)."""
        lists = []
        for attr in self.block_attrs:
            blocks = getattr(transformer, attr, None)
            if not isinstance(blocks, torch.nn.ModuleList) or (len(blocks) == 0 and attr not in self.optional_blocks):
                raise ValueError(f"{type(transformer).__name__}.{attr} is not a non-empty ModuleList of blocks")
            if len(blocks):
                lists.append(blocks)
        if not lists:
            raise ValueError(f"{type(transformer).__name__} has no blocks in {', '.join(self.block_attrs)}")
        return lists

    def stack(self, transformer: torch.nn.Module, hook_name: str) -> BlockStack:
        """The block stack of ``transformer`` (not hooked yet: ``attach`` it)."""
        return BlockStack(self.block_lists(transformer), hook_name, dict(self.block_outputs))


_ADAPTERS: dict[str, Adapter] = {}


def register(fn: Callable[[], Adapter]) -> Callable[[], Adapter]:
    """Decorator: register the adapter returned by ``fn`` under its ``model_class``."""
    adapter = fn()
    _ADAPTERS[adapter.model_class] = adapter
    return fn


def supported_models() -> list[str]:
    """Class names of the transformers SenCache supports."""
    return sorted(_ADAPTERS)


def find_adapter(model_class: str) -> Adapter | None:
    """The adapter registered for the transformer class named ``model_class``, or None."""
    return _ADAPTERS.get(model_class)


def get_adapter(transformer: torch.nn.Module) -> Adapter:
    """The adapter for ``transformer``'s class; ValueError naming the supported classes otherwise."""
    name = type(transformer).__name__
    if name not in _ADAPTERS:
        raise ValueError(
            f"SenCache does not support {name}; supported transformers: {', '.join(supported_models())}. "
            f"To add it, register an Adapter naming its block list(s) and guidance style, e.g. "
            f"`@sencache.adapters.register` on `def mine(): return Adapter(model_class={name!r}, "
            "blocks=('transformer_blocks',), guidance='separate')` (README: \"Add a model family\"; in the "
            "repository, one file under sencache/adapters/)."
        )
    return _ADAPTERS[name]


from sencache.adapters import (  # noqa: E402,F401  (registration)
    cogvideox,
    cogview4,
    flux,
    hunyuanvideo,
    ltx,
    mochi,
    qwenimage,
    sd3,
    wan,
)
