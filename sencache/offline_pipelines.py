"""Tiny, random-weight, fully offline diffusers video pipelines for tests and CPU demos.

Every pipeline is assembled from configs (taken from diffusers' own fast pipeline tests) with no tokenizer and no
text encoder, so nothing is downloaded. Callers feed random prompt embeddings via :func:`call_kwargs` instead.

Example:
    >>> pipe = build_pipeline("wan", seed=0)
    >>> frames = pipe(**call_kwargs("wan", pipe)).frames  # (batch, frames, channels, height, width)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    LTXPipeline,
    LTXVideoTransformer3DModel,
    WanPipeline,
    WanTransformer3DModel,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = ["ARCHITECTURES", "build_pipeline", "call_kwargs", "cast_weights"]

ARCHITECTURES: tuple[str, ...] = ("wan", "cogvideox", "ltx")

# Text sequence length of the random prompt embeddings (CogVideoX reads it from its transformer config instead).
_TEXT_SEQ_LEN = 16

# Per-architecture default call geometry: small but valid for each tiny VAE.
#   wan:       VAE spatial x8 / temporal x4, patch (1, 2, 2): 9 frames at 32x32 -> 3 latent frames of 4x4 -> 12 tokens.
#   cogvideox: VAE spatial x8 / temporal x4, patch 2: 9 frames at 16x16 -> 3 latent frames of 2x2 -> 3 video tokens.
#   ltx:       VAE spatial x4 / temporal x4, patch 1: 9 frames at 32x32 -> 3 latent frames of 8x8 -> 192 tokens
#              (LTXPipeline requires height and width divisible by 32).
_GEOMETRY: dict[str, dict[str, int]] = {
    "wan": {"height": 32, "width": 32, "num_frames": 9},
    "cogvideox": {"height": 16, "width": 16, "num_frames": 9},
    "ltx": {"height": 32, "width": 32, "num_frames": 9},
}


def _check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; supported architectures: {', '.join(ARCHITECTURES)}")
    return arch


def _seeded(seed: int, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Construct a module right after ``torch.manual_seed(seed)`` without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast floating-point weights to ``dtype`` in place, keeping ``_keep_in_fp32_modules`` in float32.

    This mirrors ``from_pretrained(torch_dtype=...)`` (e.g. Wan keeps its time embedder and norms in float32) and avoids
    the warning ``ModelMixin.to(dtype)`` logs for models that declare float32 modules.
    """
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, sub in module.named_modules():
        if keep.intersection(name.split(".")):
            continue
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)


def _build_wan(seed: int, overrides: dict[str, Any]) -> WanPipeline:
    transformer_config: dict[str, Any] = {
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
    transformer_config.update(overrides)
    vae = _seeded(
        seed,
        lambda: AutoencoderKLWan(
            base_dim=3,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ),
    )
    transformer = _seeded(seed, lambda: WanTransformer3DModel(**transformer_config))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer, transformer_2=None
    )


def _build_cogvideox(seed: int, overrides: dict[str, Any]) -> CogVideoXPipeline:
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
        "max_text_seq_length": _TEXT_SEQ_LEN,
        # diffusers' test keeps the default: absolute sincos positional embeddings, no rotary embeddings.
        "use_rotary_positional_embeddings": False,
    }
    transformer_config.update(overrides)
    transformer = _seeded(seed, lambda: CogVideoXTransformer3DModel(**transformer_config))
    vae = _seeded(
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


def _build_ltx(seed: int, overrides: dict[str, Any]) -> LTXPipeline:
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
    transformer = _seeded(seed, lambda: LTXVideoTransformer3DModel(**transformer_config))

    def make_vae() -> AutoencoderKLLTXVideo:
        # The decoder_* arguments default to the full-size LTX decoder (128..512 channels, 4/3/3/3/4 layers), which
        # makes decoding slow; mirror the tiny encoder instead (spatial x4, temporal x4).
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

    vae = _seeded(seed, make_vae)
    scheduler = FlowMatchEulerDiscreteScheduler()
    return LTXPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer, scheduler=scheduler)


_BUILDERS: dict[str, Callable[[int, dict[str, Any]], DiffusionPipeline]] = {
    "wan": _build_wan,
    "cogvideox": _build_cogvideox,
    "ltx": _build_ltx,
}


def build_pipeline(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> DiffusionPipeline:
    """Build a tiny random-weight diffusers video pipeline entirely offline.

    The transformer and the VAE are each constructed right after ``torch.manual_seed(seed)`` (the caller's global RNG
    state is restored afterwards), so two builds with the same seed have bitwise-identical weights. The pipeline has
    no tokenizer or text encoder; call it with the prompt embeddings from :func:`call_kwargs`.

    Args:
        arch: One of :data:`ARCHITECTURES` (``"wan"``, ``"cogvideox"``, ``"ltx"``).
        seed: Seed for the weight initialisation.
        dtype: dtype the weights are cast to after construction; modules a model lists in
            ``_keep_in_fp32_modules`` stay in float32, as with ``from_pretrained(torch_dtype=dtype)``.
        **overrides: Extra or replacement keyword arguments for the transformer config (e.g. ``num_layers=4``).
            The default transformer has 2 blocks (``pipe.transformer.blocks`` for Wan,
            ``pipe.transformer.transformer_blocks`` for CogVideoX and LTX).

    Returns:
        A ``WanPipeline``, ``CogVideoXPipeline`` or ``LTXPipeline`` on CPU with its progress bar disabled.

    Raises:
        ValueError: If ``arch`` is not a supported architecture.
    """
    pipe = _BUILDERS[_check_arch(arch)](seed, dict(overrides))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            cast_weights(component, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _text_shape(arch: str, pipe: DiffusionPipeline, seq_len: int | None) -> tuple[int, int]:
    config = pipe.transformer.config
    if arch == "wan":
        return seq_len or _TEXT_SEQ_LEN, config.text_dim
    if arch == "cogvideox":
        return seq_len or config.max_text_seq_length, config.text_embed_dim
    return seq_len or _TEXT_SEQ_LEN, config.caption_channels


def call_kwargs(
    arch: str,
    pipe: DiffusionPipeline,
    batch_size: int = 1,
    seed: int = 0,
    num_inference_steps: int = 8,
    guidance_scale: float = 5.0,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for calling a pipeline from :func:`build_pipeline` offline.

    Prompt and negative-prompt embeddings are random but deterministic in ``seed`` (drawn from two separate CPU
    generators, so the same on every device), shaped ``(batch_size, seq_len, text_dim)`` for the pipeline's
    transformer, in its dtype and on its device. LTX also
    gets all-ones boolean attention masks. The denoising noise comes from ``generator``, seeded with ``seed``; a fresh
    dict (and generator) is needed for every call to reproduce an output. Frames come back as a ``torch.Tensor`` of
    shape ``(batch_size, num_frames, 3, height, width)`` in ``[0, 1]``.

    Args:
        arch: One of :data:`ARCHITECTURES`; must match the pipeline.
        pipe: A pipeline returned by :func:`build_pipeline`.
        batch_size: Number of prompts (videos) in the batch.
        seed: Seed for the prompt embeddings and the latent-noise generator.
        num_inference_steps: Number of denoising steps.
        guidance_scale: Classifier-free guidance scale; CFG is active when it is greater than 1.
        **overrides: Entries that replace or extend the returned dict (e.g. ``height``, ``output_type``). An overridden
            ``max_sequence_length`` also sets the length of the generated embeddings.

    Returns:
        The keyword arguments for ``pipe(**kwargs)``.

    Raises:
        ValueError: If ``arch`` is not a supported architecture.
    """
    _check_arch(arch)
    dtype, device = pipe.transformer.dtype, pipe.transformer.device
    seq_len, text_dim = _text_shape(arch, pipe, overrides.get("max_sequence_length"))
    shape = (batch_size, seq_len, text_dim)
    prompt_embeds, negative_prompt_embeds = (
        torch.randn(shape, generator=torch.Generator().manual_seed(s)).to(device, dtype) for s in (seed, seed + 0x5EED)
    )

    kwargs: dict[str, Any] = {
        "prompt_embeds": prompt_embeds,
        "negative_prompt_embeds": negative_prompt_embeds,
        **_GEOMETRY[arch],
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "pt",
        "max_sequence_length": seq_len,
    }
    if arch == "ltx":
        kwargs["prompt_attention_mask"] = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
        kwargs["negative_prompt_attention_mask"] = torch.ones(batch_size, seq_len, dtype=torch.bool, device=device)
    kwargs.update(overrides)
    return kwargs
