"""Wan 2.1 T2V (``wan``) and Wan 2.2 T2V with two experts (``wan22``): ``WanPipeline``.

Geometry: VAE spatial x8 / temporal x4, patch (1, 2, 2): 9 frames at 32x32 -> 3 latent frames of 4x4 -> 12 tokens.
Wan 2.2 adds ``transformer_2`` (the low-noise expert, its own weights) and ``boundary_ratio=0.875``: with the shift-7
flow-matching schedule, ``transformer`` runs the steps with ``t >= 875`` and ``transformer_2`` the rest (4 + 4 of an
8-step call, 5 + 5 of a 10-step call).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from sencache.offline.family import Facts, Family, Request, seeded

# transformer_2 is built right after torch.manual_seed(seed + this), so the two experts differ.
EXPERT_2_SEED_OFFSET = 0x22
BOUNDARY_RATIO = 0.875


def _transformer_config(overrides: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 32,
    }
    config.update(overrides)
    return config


def _vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )


def _build(seed: int, overrides: dict[str, Any], two_experts: bool) -> WanPipeline:
    config = _transformer_config(overrides)
    vae = seeded(seed, _vae)
    transformer = seeded(seed, lambda: WanTransformer3DModel(**config))
    transformer_2 = (
        seeded(seed + EXPERT_2_SEED_OFFSET, lambda: WanTransformer3DModel(**config)) if two_experts else None
    )
    return WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=BOUNDARY_RATIO if two_experts else None,
    )


def _inputs(request: Request) -> dict[str, Any]:
    return {**request.text(request.transformer.config.text_dim), "guidance_scale": request.guidance_scale}


_FACTS = Facts(
    transformer="WanTransformer3DModel",
    block_lists=("blocks",),
    between_lists="",
    block_returns={"WanTransformerBlock": "hidden_states only (encoder stream not updated)"},
    latent_arg="hidden_states",
    timestep_arg="timestep",
    guidance='separate calls: cache_context("cond") then "uncond" when guidance_scale > 1',
    step_index=True,
    timestep="view: t.expand(B) of scheduler.timesteps (expand_timesteps=False)",
)

WAN = Family(
    name="wan",
    build=lambda seed, overrides: _build(seed, overrides, two_experts=False),
    inputs=_inputs,
    geometry={"height": 32, "width": 32, "num_frames": 9},
    output="frames",
    facts=_FACTS,
)

WAN22 = Family(
    name="wan22",
    build=lambda seed, overrides: _build(seed, overrides, two_experts=True),
    inputs=_inputs,
    geometry={"height": 32, "width": 32, "num_frames": 9},
    output="frames",
    facts=replace(
        _FACTS,
        guidance=(
            "per step one expert: transformer while t >= boundary_ratio * 1000, else transformer_2; each called in "
            'cache_context("cond") then "uncond" (guidance_scale_2 for transformer_2, default guidance_scale)'
        ),
    ),
)
