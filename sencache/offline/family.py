"""What one tiny offline family is made of: a builder, its call inputs, its geometry, and the facts adapters need.

Each family module (``sencache/offline/<family>.py``) defines one :class:`Family` (or two, for Wan 2.1 and 2.2);
``sencache/offline/__init__.py`` lists them in one table and ``sencache.offline_pipelines`` is the public API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# Text sequence length of the random prompt embeddings (a family may read it from its config instead).
TEXT_SEQ_LEN = 16
# Seed offset between independent random streams (prompt, negative prompt, pooled, ...) of one call.
STREAM_OFFSET = 0x5EED


def seeded(seed: int, factory: Callable[[], Any]) -> Any:
    """Construct a module right after ``torch.manual_seed(seed)`` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


@dataclass(frozen=True)
class Request:
    """One :func:`~sencache.offline_pipelines.call_kwargs` request: draws the random text inputs of a call.

    Stream ``k`` is a CPU generator seeded with ``seed + k * STREAM_OFFSET`` (0: prompt, 1: negative prompt,
    2: pooled prompt, 3: negative pooled prompt), so the same on every device.
    """

    pipe: DiffusionPipeline
    batch_size: int
    seed: int
    seq_len: int
    guidance_scale: float

    @property
    def transformer(self) -> torch.nn.Module:
        """The pipeline's transformer (its device and dtype are those of the inputs)."""
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    def randn(self, stream: int, *shape: int) -> torch.Tensor:
        """A ``(batch, *shape)`` standard normal tensor from stream ``stream``."""
        generator = torch.Generator().manual_seed(self.seed + stream * STREAM_OFFSET)
        return torch.randn((self.batch_size, *shape), generator=generator).to(
            self.transformer.device, self.transformer.dtype
        )

    def text(self, dim: int) -> dict[str, torch.Tensor]:
        """``prompt_embeds`` and ``negative_prompt_embeds`` of shape ``(batch, seq_len, dim)``."""
        return {
            "prompt_embeds": self.randn(0, self.seq_len, dim),
            "negative_prompt_embeds": self.randn(1, self.seq_len, dim),
        }

    def pooled(self, dim: int) -> dict[str, torch.Tensor]:
        """``pooled_prompt_embeds`` and ``negative_pooled_prompt_embeds`` of shape ``(batch, dim)``."""
        return {"pooled_prompt_embeds": self.randn(2, dim), "negative_pooled_prompt_embeds": self.randn(3, dim)}

    def masks(self, name: str, dtype: torch.dtype = torch.bool) -> dict[str, torch.Tensor]:
        """All-ones ``<name>`` and ``negative_<name>`` of shape ``(batch, seq_len)``."""
        ones = torch.ones(self.batch_size, self.seq_len, dtype=dtype, device=self.transformer.device)
        return {name: ones, f"negative_{name}": ones.clone()}


@dataclass(frozen=True)
class Facts:
    """What a caching adapter needs to know about a family (read from diffusers 0.42.1's sources).

    Attributes:
        transformer: Class name of the transformer (``pipe.transformer``; Wan 2.2 also ``pipe.transformer_2``).
        block_lists: Attribute names of the block ``ModuleList`` s, in the order the forward runs them.
        between_lists: What the forward does to the streams between two block lists ("" when there is one list).
        block_returns: Per block class, the order of its returned streams (``TransformerBlockRegistry``).
        latent_arg: Name of the transformer's latent argument.
        timestep_arg: Name of its timestep argument.
        guidance: How the pipeline runs guidance and which ``cache_context`` names it uses.
        step_index: Whether the pipeline passes ``step_index`` in its ``cache_context``.
        timestep: Whether the timestep passed is a view of ``scheduler.timesteps`` or a fresh tensor.
    """

    transformer: str
    block_lists: tuple[str, ...]
    between_lists: str
    block_returns: dict[str, str]
    latent_arg: str
    timestep_arg: str
    guidance: str
    step_index: bool
    timestep: str


@dataclass(frozen=True)
class Family:
    """One tiny offline pipeline family.

    Attributes:
        name: The architecture key (``build_pipeline(name)``).
        build: ``(seed, transformer_overrides) -> pipeline`` (weights in float32, not yet cast or set to eval).
        inputs: ``Request -> dict`` of the family's text inputs and guidance arguments.
        seq_len: ``pipe -> default text length`` of the random embeddings.
        geometry: Default ``height``, ``width`` (and ``num_frames`` for video) of a call.
        output: Attribute of the pipeline output holding the tensor: ``"frames"`` (video) or ``"images"``.
        facts: What adapters need to know (see :class:`Facts`).
    """

    name: str
    build: Callable[[int, dict[str, Any]], DiffusionPipeline]
    inputs: Callable[[Request], dict[str, Any]]
    geometry: dict[str, int]
    output: str
    facts: Facts
    seq_len: Callable[[DiffusionPipeline], int] = field(default=lambda pipe: TEXT_SEQ_LEN)


def image_vae(seed: int, latent_channels: int) -> Any:
    """The tiny one-level ``AutoencoderKL`` of the image families (Flux, SD3), seeded."""
    from diffusers import AutoencoderKL

    return seeded(seed, lambda: AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035))
