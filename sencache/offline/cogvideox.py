"""CogVideoX (``cogvideox``): ``CogVideoXPipeline``.

Geometry: VAE spatial x8 / temporal x4, patch 2: 9 frames at 16x16 -> 3 latent frames of 2x2 -> 3 video tokens.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

from sencache.offline.family import TEXT_SEQ_LEN, Facts, Family, seeded


def _build(seed: int, overrides: dict[str, Any]) -> CogVideoXPipeline:
    transformer_config: dict[str, Any] = {
        # inner dim = num_attention_heads * attention_head_dim = 32 (must be divisible by 16 for the 3D sincos PE)
        "num_attention_heads": 4,
        "attention_head_dim": 8,
        "in_channels": 4,
        "out_channels": 4,
        "time_embed_dim": 2,
        "text_embed_dim": 32,
        "num_layers": 2,
        "sample_width": 2,  # latent width 2 -> 16 px
        "sample_height": 2,  # latent height 2 -> 16 px
        "sample_frames": 9,  # latent frames (9 - 1) / 4 + 1 = 3
        "patch_size": 2,
        "temporal_compression_ratio": 4,
        "max_text_seq_length": TEXT_SEQ_LEN,
        # diffusers' test keeps the default: absolute sincos positional embeddings, no rotary embeddings.
        "use_rotary_positional_embeddings": False,
    }
    transformer_config.update(overrides)
    transformer = seeded(seed, lambda: CogVideoXTransformer3DModel(**transformer_config))
    vae = seeded(
        seed,
        lambda: AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4,
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
        ),
    )
    # Scheduler settings of the released CogVideoX-2b checkpoint (v-prediction, zero-terminal-SNR, trailing spacing).
    scheduler = CogVideoXDDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=3.0,
        timestep_spacing="trailing",
    )
    return CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


COGVIDEOX = Family(
    name="cogvideox",
    build=_build,
    inputs=lambda r: {**r.text(r.transformer.config.text_embed_dim), "guidance_scale": r.guidance_scale},
    seq_len=lambda pipe: pipe.transformer.config.max_text_seq_length,
    geometry={"height": 16, "width": 16, "num_frames": 9},
    output="frames",
    facts=Facts(
        transformer="CogVideoXTransformer3DModel",
        block_lists=("transformer_blocks",),
        between_lists="",
        block_returns={"CogVideoXBlock": "(hidden_states, encoder_hidden_states)"},
        latent_arg="hidden_states",
        timestep_arg="timestep",
        guidance='batched CFG: one call on cat([latents] * 2) in cache_context("cond_uncond")',
        step_index=False,
        timestep="view: t.expand(2B) of scheduler.timesteps",
    ),
)
