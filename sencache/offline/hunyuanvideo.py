"""HunyuanVideo (``hunyuanvideo``): ``HunyuanVideoPipeline``, guidance-distilled (``guidance_embeds=True``).

Geometry: VAE spatial x8 / temporal x4, patch 1: 9 frames at 16x16 -> 3 latent frames of 2x2 -> 12 video tokens
(height and width must be divisible by 16) + 16 text tokens. ``guidance_scale`` feeds the distilled guidance
embedding (one call per step); true CFG runs when ``true_cfg_scale > 1`` is passed as an override.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)

from sencache.offline.family import Facts, Family, Request, seeded


def _build(seed: int, overrides: dict[str, Any]) -> HunyuanVideoPipeline:
    config: dict[str, Any] = {
        "in_channels": 4,
        "out_channels": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 10,
        "num_layers": 1,
        "num_single_layers": 1,
        "num_refiner_layers": 1,
        "patch_size": 1,
        "patch_size_t": 1,
        "guidance_embeds": True,
        "text_embed_dim": 16,
        "pooled_projection_dim": 8,
        "rope_axes_dim": (2, 4, 4),
    }
    config.update(overrides)
    transformer = seeded(seed, lambda: HunyuanVideoTransformer3DModel(**config))
    vae = seeded(
        seed,
        lambda: AutoencoderKLHunyuanVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            layers_per_block=1,
            act_fn="silu",
            norm_num_groups=4,
            scaling_factor=0.476986,
            spatial_compression_ratio=8,
            temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ),
    )
    return HunyuanVideoPipeline(
        text_encoder=None,
        tokenizer=None,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=None,
        tokenizer_2=None,
    )


def _inputs(request: Request) -> dict[str, Any]:
    config = request.transformer.config
    return {
        **request.text(config.text_embed_dim),
        **request.pooled(config.pooled_projection_dim),
        **request.masks("prompt_attention_mask"),
        "guidance_scale": request.guidance_scale,
        "true_cfg_scale": 1.0,
    }


HUNYUANVIDEO = Family(
    name="hunyuanvideo",
    build=_build,
    inputs=_inputs,
    geometry={"height": 16, "width": 16, "num_frames": 9},
    output="frames",
    facts=Facts(
        transformer="HunyuanVideoTransformer3DModel",
        block_lists=("transformer_blocks", "single_transformer_blocks"),
        between_lists=(
            "nothing: both lists carry (hidden_states, encoder_hidden_states) separately; the blocks are called "
            "with positional arguments (hidden_states, encoder_hidden_states, temb, attention_mask, "
            "image_rotary_emb, token_replace_emb, first_frame_num_tokens). Before the lists, the text goes through "
            "context_embedder.token_refiner.refiner_blocks (a third ModuleList, not part of the stack)"
        ),
        block_returns={
            "HunyuanVideoTransformerBlock": "(hidden_states, encoder_hidden_states)",
            "HunyuanVideoSingleTransformerBlock": "(hidden_states, encoder_hidden_states)",
        },
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance=(
            'guidance-distilled: one call per step in cache_context("cond") with guidance=guidance_scale * 1000; '
            'true CFG (true_cfg_scale > 1 and negative embeds): a second call in cache_context("uncond")'
        ),
        step_index=False,
        timestep="view: t.expand(B).to(latents.dtype), a no-op .to as latents stay float32",
    ),
)
