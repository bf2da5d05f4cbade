"""Stable Diffusion 3 (``sd3``): ``StableDiffusion3Pipeline``, batched CFG, no ``cache_context``.

Geometry: a 1-level VAE (no downsampling) with 4 latent channels, patch 1: 8x8 px -> 64 image tokens + 16 text tokens.
"""

from __future__ import annotations

from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

from sencache.offline.family import Facts, Family, Request, image_vae, seeded


def _build(seed: int, overrides: dict[str, Any]) -> StableDiffusion3Pipeline:
    config: dict[str, Any] = {
        "sample_size": 32,
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "caption_projection_dim": 32,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 64,
        "out_channels": 4,
    }
    config.update(overrides)
    transformer = seeded(seed, lambda: SD3Transformer2DModel(**config))
    vae = image_vae(seed, latent_channels=4)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _inputs(request: Request) -> dict[str, Any]:
    config = request.transformer.config
    return {
        **request.text(config.joint_attention_dim),
        **request.pooled(config.pooled_projection_dim),
        "guidance_scale": request.guidance_scale,
    }


SD3 = Family(
    name="sd3",
    build=_build,
    inputs=_inputs,
    geometry={"height": 8, "width": 8},
    output="images",
    facts=Facts(
        transformer="SD3Transformer2DModel",
        block_lists=("transformer_blocks",),
        between_lists="",
        block_returns={
            "JointTransformerBlock": (
                "(encoder_hidden_states, hidden_states); the last block (context_pre_only=True) returns "
                "encoder_hidden_states=None"
            )
        },
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance=(
            "batched CFG: one call on cat([latents] * 2) (uncond half first), no cache_context at all; with "
            "skip_guidance_layers a third call (cond only, skip_layers=...) on some steps"
        ),
        step_index=False,
        timestep="view: t.expand(2B) of scheduler.timesteps (cloned only on TPU)",
    ),
)
