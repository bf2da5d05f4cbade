"""Qwen-Image (``qwenimage``): ``QwenImagePipeline``, true CFG (two calls per step).

Geometry: VAE spatial x4 (2 downsamplings) with z_dim 4, 2x2 packing: 16x16 px -> 4x4 latent -> 2x2 packed tokens of
16 channels (4 image tokens) + 16 text tokens. ``call_kwargs``' ``guidance_scale`` is passed as ``true_cfg_scale``
(CFG with the negative embeddings when > 1); the pipeline's own ``guidance_scale`` is None (no guidance embedding).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

from sencache.offline.family import Facts, Family, Request, seeded


def _build(seed: int, overrides: dict[str, Any]) -> QwenImagePipeline:
    config: dict[str, Any] = {
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 16,
        "guidance_embeds": False,
        "axes_dims_rope": (8, 4, 4),
    }
    config.update(overrides)
    transformer = seeded(seed, lambda: QwenImageTransformer2DModel(**config))
    vae = seeded(
        seed,
        lambda: AutoencoderKLQwenImage(
            base_dim=8,
            z_dim=4,
            dim_mult=[1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        ),
    )
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )


def _inputs(request: Request) -> dict[str, Any]:
    return {
        **request.text(request.transformer.config.joint_attention_dim),
        **request.masks("prompt_embeds_mask", dtype=torch.long),
        "guidance_scale": None,
        "true_cfg_scale": request.guidance_scale,
    }


QWENIMAGE = Family(
    name="qwenimage",
    build=_build,
    inputs=_inputs,
    geometry={"height": 16, "width": 16},
    output="images",
    facts=Facts(
        transformer="QwenImageTransformer2DModel",
        block_lists=("transformer_blocks",),
        between_lists="",
        block_returns={"QwenImageTransformerBlock": "(encoder_hidden_states, hidden_states)"},
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance=(
            'true CFG: cache_context("cond") then "uncond" when true_cfg_scale > 1 and negative embeds are given '
            "(the combined prediction is rescaled to the cond prediction's norm); no guidance embedding. An all-ones "
            "prompt_embeds_mask is dropped by the pipeline (the transformer gets encoder_hidden_states_mask=None)"
        ),
        step_index=False,
        timestep="fresh: t.expand(B).to(latents.dtype) / 1000",
    ),
)
