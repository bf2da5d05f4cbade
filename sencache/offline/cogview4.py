"""CogView4 (``cogview4``): ``CogView4Pipeline``, CFG as two calls per step.

Geometry: a 2-level VAE (spatial x2), patch 2: 16x16 px (height and width must be divisible by 16) -> 8x8 latent ->
16 image tokens + 16 text tokens.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler

from sencache.offline.family import Facts, Family, seeded


def _build(seed: int, overrides: dict[str, Any]) -> CogView4Pipeline:
    config: dict[str, Any] = {
        "patch_size": 2,
        "in_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 4,
        "num_attention_heads": 4,
        "out_channels": 4,
        "text_embed_dim": 32,
        "time_embed_dim": 8,
        "condition_dim": 4,
    }
    config.update(overrides)
    transformer = seeded(seed, lambda: CogView4Transformer2DModel(**config))
    vae = seeded(
        seed,
        lambda: AutoencoderKL(
            block_out_channels=[8, 8],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            norm_num_groups=4,
            sample_size=128,
        ),
    )
    # Scheduler settings of diffusers' CogView4 test (dynamic, linear time shift from the image sequence length).
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    return CogView4Pipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


COGVIEW4 = Family(
    name="cogview4",
    build=_build,
    inputs=lambda r: {**r.text(r.transformer.config.text_embed_dim), "guidance_scale": r.guidance_scale},
    geometry={"height": 16, "width": 16},
    output="images",
    facts=Facts(
        transformer="CogView4Transformer2DModel",
        block_lists=("transformer_blocks",),
        between_lists=(
            "the blocks are called with positional arguments (hidden_states, encoder_hidden_states, temb, "
            "image_rotary_emb, attention_mask, attention_kwargs)"
        ),
        block_returns={"CogView4TransformerBlock": "(hidden_states, encoder_hidden_states)"},
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance='separate calls: cache_context("cond") then "uncond" when guidance_scale > 1',
        step_index=False,
        timestep="view: t.expand(B) of scheduler.timesteps",
    ),
)
