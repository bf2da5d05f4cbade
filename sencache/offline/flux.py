"""FLUX.1 (``flux``): ``FluxPipeline``, guidance-distilled (``guidance_embeds=True``, like FLUX.1-dev).

Geometry: a 1-level VAE (no spatial downsampling) and 2x2 latent packing: 8x8 px -> 8x8 latent of 1 channel ->
4x4 packed tokens of 4 channels (16 image tokens) + 16 text tokens. Guidance: ``guidance_scale`` feeds the
distilled guidance embedding (one call per step); true CFG runs when ``true_cfg_scale > 1`` is passed as an
override (the negative embeddings are always supplied), adding a second call per step.
"""

from __future__ import annotations

from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from sencache.offline.family import Facts, Family, Request, image_vae, seeded


def _build(seed: int, overrides: dict[str, Any]) -> FluxPipeline:
    config: dict[str, Any] = {
        "patch_size": 1,
        "in_channels": 4,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "guidance_embeds": True,
        "axes_dims_rope": (4, 4, 8),
    }
    config.update(overrides)
    transformer = seeded(seed, lambda: FluxTransformer2DModel(**config))
    vae = image_vae(seed, latent_channels=1)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )


def _inputs(request: Request) -> dict[str, Any]:
    config = request.transformer.config
    return {
        **request.text(config.joint_attention_dim),
        **request.pooled(config.pooled_projection_dim),
        "guidance_scale": request.guidance_scale,
        "true_cfg_scale": 1.0,
    }


FLUX = Family(
    name="flux",
    build=_build,
    inputs=_inputs,
    geometry={"height": 8, "width": 8},
    output="images",
    facts=Facts(
        transformer="FluxTransformer2DModel",
        block_lists=("transformer_blocks", "single_transformer_blocks"),
        between_lists=(
            "nothing: both lists carry (hidden_states, encoder_hidden_states) separately (the single blocks "
            "concatenate text+image inside each block and split again); ControlNet residuals, when given, are "
            "added to hidden_states after blocks of either list"
        ),
        block_returns={
            "FluxTransformerBlock": "(encoder_hidden_states, hidden_states)",
            "FluxSingleTransformerBlock": "(encoder_hidden_states, hidden_states)",
        },
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance=(
            'guidance-distilled: one call per step in cache_context("cond") with guidance=guidance_scale (embedded); '
            'true CFG (true_cfg_scale > 1 and negative embeds): a second call in cache_context("uncond")'
        ),
        step_index=False,
        timestep="fresh: t.expand(B).to(latents.dtype) / 1000 (the forward multiplies by 1000 again)",
    ),
)
