"""LTX-Video (``ltx``): ``LTXPipeline``.

Geometry: VAE spatial x4 / temporal x4, patch 1: 9 frames at 32x32 -> 3 latent frames of 8x8 -> 192 tokens
(``LTXPipeline`` requires height and width divisible by 32).
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

from sencache.offline.family import Facts, Family, Request, seeded


def _vae() -> AutoencoderKLLTXVideo:
    # The decoder_* arguments default to the full-size LTX decoder (128..512 channels, 4/3/3/3/4 layers), which makes
    # decoding slow; mirror the tiny encoder instead (spatial x4, temporal x4).
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return vae


def _build(seed: int, overrides: dict[str, Any]) -> LTXPipeline:
    transformer_config: dict[str, Any] = {
        "in_channels": 8,
        "out_channels": 8,
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": 4,
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
        "num_layers": 2,
        "caption_channels": 32,
    }
    transformer_config.update(overrides)
    transformer = seeded(seed, lambda: LTXVideoTransformer3DModel(**transformer_config))
    vae = seeded(seed, _vae)
    scheduler = FlowMatchEulerDiscreteScheduler()
    return LTXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


def _inputs(request: Request) -> dict[str, Any]:
    return {
        **request.text(request.transformer.config.caption_channels),
        **request.masks("prompt_attention_mask"),
        "guidance_scale": request.guidance_scale,
    }


LTX = Family(
    name="ltx",
    build=_build,
    inputs=_inputs,
    geometry={"height": 32, "width": 32, "num_frames": 9},
    output="frames",
    facts=Facts(
        transformer="LTXVideoTransformer3DModel",
        block_lists=("transformer_blocks",),
        between_lists="",
        block_returns={"LTXVideoTransformerBlock": "hidden_states only (encoder stream not updated)"},
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance='batched CFG: one call on cat([latents] * 2) in cache_context("cond_uncond")',
        step_index=False,
        timestep="view: t.expand(2B) of scheduler.timesteps",
    ),
)
