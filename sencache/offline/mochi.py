"""Mochi 1 (``mochi``): ``MochiPipeline``, batched CFG.

Geometry: the pipeline fixes VAE spatial x8 / temporal x6; patch 2: 7 frames at 16x16 -> 2 latent frames of 2x2 ->
2 video tokens + 16 text tokens.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

from sencache.offline.family import Facts, Family, Request, seeded


def _transformer(config: dict[str, Any]) -> MochiTransformer3DModel:
    transformer = MochiTransformer3DModel(**config)
    # diffusers' own test zeroes the learned RoPE frequencies (random ones make the tiny model ill-conditioned).
    transformer.pos_frequencies.data.zero_()
    return transformer


def _build(seed: int, overrides: dict[str, Any]) -> MochiPipeline:
    config: dict[str, Any] = {
        "patch_size": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "num_layers": 2,
        "pooled_projection_dim": 16,
        "in_channels": 12,
        "out_channels": None,
        "qk_norm": "rms_norm",
        "text_embed_dim": 32,
        "time_embed_dim": 4,
        "activation_fn": "swiglu",
        "max_sequence_length": 16,
    }
    config.update(overrides)
    transformer = seeded(seed, lambda: _transformer(config))
    vae = seeded(
        seed,
        lambda: AutoencoderKLMochi(
            latent_channels=12,
            out_channels=3,
            encoder_block_out_channels=(32, 32, 32, 32),
            decoder_block_out_channels=(32, 32, 32, 32),
            layers_per_block=(1, 1, 1, 1, 1),
        ),
    )
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=transformer
    )


def _inputs(request: Request) -> dict[str, Any]:
    return {
        **request.text(request.transformer.config.text_embed_dim),
        **request.masks("prompt_attention_mask"),
        "guidance_scale": request.guidance_scale,
    }


MOCHI = Family(
    name="mochi",
    build=_build,
    inputs=_inputs,
    seq_len=lambda pipe: pipe.transformer.config.max_sequence_length,
    geometry={"height": 16, "width": 16, "num_frames": 7},
    output="frames",
    facts=Facts(
        transformer="MochiTransformer3DModel",
        block_lists=("transformer_blocks",),
        between_lists="",
        block_returns={
            "MochiTransformerBlock": (
                "(hidden_states, encoder_hidden_states); the last block (context_pre_only=True) returns its "
                "encoder_hidden_states input unchanged"
            )
        },
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance='batched CFG: one call on cat([latents] * 2) (uncond half first) in cache_context("cond_uncond")',
        step_index=False,
        timestep=(
            "view: t.expand(2B).to(latents.dtype), a no-op .to as latents stay float32 (sigmas from "
            "linear_quadratic_schedule; the pipeline's current_timestep is 1000 - t)"
        ),
    ),
)
