"""Per-architecture adapters: what differs between transformers, as data, one small file per model family.

An adapter names the module list that is the block stack, whether the blocks also update the encoder hidden
states, how the pipeline runs classifier-free guidance, and which steps are forced by default. Register one with
``@register`` on a function returning an ``Adapter`` (see ``wan.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Adapter:
    """How SenCache hooks one transformer class.

    Args:
        model_class: the transformer's class name, e.g. ``"WanTransformer3DModel"``.
        blocks: attribute of the transformer holding the block ``ModuleList``.
        blocks_update_encoder: blocks return ``(hidden_states, encoder_hidden_states)`` and both get residuals.
        batched_cfg: the pipeline runs guidance as one call on ``[uncond, cond]`` (the cond half second);
            otherwise as separate calls in ``cache_context("cond")`` / ``("uncond")``.
        force_first_steps: steps computed at the start by default (at least 1).
        force_last_steps: steps computed at the end by default.
        latent_arg: the transformer's argument holding the noisy latent ``x``.
        timestep_arg: the transformer's argument holding the timestep ``t``.
    """

    model_class: str
    blocks: str
    blocks_update_encoder: bool
    batched_cfg: bool
    force_first_steps: int = 1
    force_last_steps: int = 0
    latent_arg: str = "hidden_states"
    timestep_arg: str = "timestep"

    def block_list(self, transformer: torch.nn.Module) -> torch.nn.ModuleList:
        """The block stack of ``transformer``."""
        blocks = getattr(transformer, self.blocks, None)
        if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
            raise ValueError(f"{type(transformer).__name__}.{self.blocks} is not a non-empty ModuleList of blocks")
        return blocks


_ADAPTERS: dict[str, Adapter] = {}


def register(fn: Callable[[], Adapter]) -> Callable[[], Adapter]:
    """Decorator: register the adapter returned by ``fn`` under its ``model_class``."""
    adapter = fn()
    _ADAPTERS[adapter.model_class] = adapter
    return fn


def supported_models() -> list[str]:
    """Class names of the transformers SenCache supports."""
    return sorted(_ADAPTERS)


def get_adapter(transformer: torch.nn.Module) -> Adapter:
    """The adapter for ``transformer``'s class; ValueError naming the supported classes otherwise."""
    name = type(transformer).__name__
    if name not in _ADAPTERS:
        raise ValueError(
            f"SenCache does not support {name}; supported transformers: {', '.join(supported_models())}. "
            "Add an adapter file under sencache/adapters/ for a new architecture."
        )
    return _ADAPTERS[name]


from sencache.adapters import cogvideox, ltx, wan  # noqa: E402,F401  (registration)
