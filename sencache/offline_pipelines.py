"""Tiny, random-weight, fully offline diffusers pipelines (video and image) for tests and CPU demos.

Every pipeline is assembled from configs (taken from diffusers' own fast pipeline tests) with no tokenizer and no
text encoder, so nothing is downloaded. Callers feed random prompt embeddings via :func:`call_kwargs` instead.
The per-family configs, call inputs and adapter facts live in ``sencache/offline/<family>.py``.

Example:
    >>> pipe = build_pipeline("wan", seed=0)
    >>> frames = pipe(**call_kwargs("wan", pipe)).frames  # (batch, frames, channels, height, width)
    >>> pipe = build_pipeline("flux", seed=0)
    >>> images = output_of("flux", pipe(**call_kwargs("flux", pipe)))  # (batch, channels, height, width)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sencache.offline import FAMILIES, Facts, Request

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = [
    "ALL_ARCHITECTURES",
    "ARCHITECTURES",
    "NEW_FAMILIES",
    "build_pipeline",
    "call_kwargs",
    "cast_weights",
    "facts",
    "output_of",
]

# The families the existing test suite parametrizes over (each one added here multiplies its run time).
ARCHITECTURES: tuple[str, ...] = ("wan", "cogvideox", "ltx")
# Families added for issue 14: images (flux, qwenimage, sd3, cogview4) and videos (hunyuanvideo, mochi, wan22).
NEW_FAMILIES: tuple[str, ...] = ("flux", "qwenimage", "hunyuanvideo", "sd3", "mochi", "cogview4", "wan22")
ALL_ARCHITECTURES: tuple[str, ...] = ARCHITECTURES + NEW_FAMILIES


def _check_arch(arch: str) -> str:
    if arch not in FAMILIES:
        raise ValueError(f"Unknown architecture {arch!r}; supported architectures: {', '.join(ALL_ARCHITECTURES)}")
    return arch


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


def build_pipeline(arch: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides: Any) -> DiffusionPipeline:
    """Build a tiny random-weight diffusers pipeline entirely offline.

    The transformer and the VAE are each constructed right after ``torch.manual_seed(seed)`` (the caller's global RNG
    state is restored afterwards), so two builds with the same seed have bitwise-identical weights. The pipeline has
    no tokenizer or text encoder; call it with the prompt embeddings from :func:`call_kwargs`.

    Args:
        arch: One of :data:`ALL_ARCHITECTURES`: the video families ``"wan"``, ``"cogvideox"``, ``"ltx"``,
            ``"hunyuanvideo"``, ``"mochi"``, ``"wan22"`` (Wan 2.2 with two experts, ``pipe.transformer_2`` built with
            seed ``seed + 0x22``) and the image families ``"flux"``, ``"qwenimage"``, ``"sd3"``, ``"cogview4"``.
        seed: Seed for the weight initialisation.
        dtype: dtype the weights are cast to after construction; modules a model lists in
            ``_keep_in_fp32_modules`` stay in float32, as with ``from_pretrained(torch_dtype=dtype)``.
        **overrides: Extra or replacement keyword arguments for the transformer config (e.g. ``num_layers=4``; both
            experts for ``"wan22"``). The block lists are named in :func:`facts` (``block_lists``); each has 1 or 2
            blocks by default.

    Returns:
        The family's diffusers pipeline on CPU with its progress bar disabled.

    Raises:
        ValueError: If ``arch`` is not a supported architecture.
    """
    pipe = FAMILIES[_check_arch(arch)].build(seed, dict(overrides))
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            cast_weights(component, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


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

    Prompt and negative-prompt embeddings are random but deterministic in ``seed`` (drawn from separate CPU
    generators, so the same on every device), shaped ``(batch_size, seq_len, text_dim)`` for the pipeline's
    transformer, in its dtype and on its device; families that need them also get pooled embeddings
    ``(batch_size, pooled_dim)`` and all-ones attention masks. The denoising noise comes from ``generator``, seeded
    with ``seed``; a fresh dict (and generator) is needed for every call to reproduce an output. With the default
    ``output_type="pt"``, :func:`output_of` gives frames ``(batch_size, num_frames, 3, height, width)`` or images
    ``(batch_size, 3, height, width)`` in ``[0, 1]``; with ``output_type="latent"`` the final latents (packed
    ``(batch_size, tokens, channels)`` for Flux and Qwen-Image).

    Guidance per family: ``guidance_scale`` is the CFG scale (CFG when > 1) for wan, wan22, cogvideox, ltx, sd3,
    mochi and cogview4, and ``true_cfg_scale`` for qwenimage; for the guidance-distilled flux and hunyuanvideo it
    feeds the guidance embedding, and true CFG (a second, negative-prompt call per step) is enabled by the override
    ``true_cfg_scale=4.0`` (any value > 1).

    Args:
        arch: One of :data:`ALL_ARCHITECTURES`; must match the pipeline.
        pipe: A pipeline returned by :func:`build_pipeline`.
        batch_size: Number of prompts (videos or images) in the batch.
        seed: Seed for the prompt embeddings and the latent-noise generator.
        num_inference_steps: Number of denoising steps.
        guidance_scale: Guidance scale (see above).
        **overrides: Entries that replace or extend the returned dict (e.g. ``height``, ``output_type``,
            ``true_cfg_scale``). An overridden ``max_sequence_length`` also sets the length of the embeddings.

    Returns:
        The keyword arguments for ``pipe(**kwargs)``.

    Raises:
        ValueError: If ``arch`` is not a supported architecture.
    """
    family = FAMILIES[_check_arch(arch)]
    seq_len = overrides.get("max_sequence_length") or family.seq_len(pipe)
    request = Request(pipe=pipe, batch_size=batch_size, seed=seed, seq_len=seq_len, guidance_scale=guidance_scale)
    kwargs: dict[str, Any] = {
        **family.inputs(request),
        **family.geometry,
        "num_inference_steps": num_inference_steps,
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "pt",
        "max_sequence_length": seq_len,
    }
    kwargs.update(overrides)
    return kwargs


def output_of(arch: str, result: Any) -> torch.Tensor:
    """The output tensor of a pipeline call: ``result.frames`` for video families, ``result.images`` for images."""
    return getattr(result, FAMILIES[_check_arch(arch)].output)


def facts(arch: str) -> Facts:
    """What a caching adapter needs to know about ``arch`` (block lists, block outputs, guidance, timestep)."""
    return FAMILIES[_check_arch(arch)].facts
