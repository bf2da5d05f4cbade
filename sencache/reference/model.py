"""The reference model: a small pixel-space ``WanTransformer3DModel`` and the ``WanPipeline`` that samples it.

The transformer works on RGB clips (``[B, 3, 17, 32, 32]`` in [-1, 1], see :mod:`sencache.reference.data`) folded
into Wan's temporal layout (5 latent frames of 12 channels, an exact rearrangement), so the pipeline needs no VAE and
no text encoder: :class:`ReferencePipeline` is ``WanPipeline`` with the prompt encoder replaced by the fixed word
embeddings of the dataset and the "decoder" replaced by :func:`~sencache.reference.data.unpack`. Everything else
(classifier-free guidance with separate cond/uncond transformer calls, the flow-matching scheduler, the denoising
loop, callbacks) is diffusers' own code, so caching hooks see exactly what they see on Wan 2.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput
from safetensors.torch import load_file

from sencache.offline_pipelines import cast_weights
from sencache.reference.data import (
    FRAMES,
    LATENT_CHANNELS,
    SIZE,
    TEXT_DIM,
    condition_embedding,
    null_embedding,
    unpack,
)

__all__ = ["CHECKPOINT_DIR", "DEFAULTS", "MODEL_CONFIG", "SCHEDULER_SHIFT", "ReferencePipeline", "build_transformer",
           "load_reference_pipeline"]

CHECKPOINT_DIR = Path(__file__).with_name("checkpoint")

# 4 blocks of width 256 (8 heads of 32), 2x2 patches of the 12-channel latent: 5 x 16 x 16 = 1280 tokens per clip.
# Seen: with 4x4 patches (192 values per token, 320 tokens) the samples kept blocky 4-pixel artefacts and the judge
# found their shape and motion at chance (38% / 31% after 44k clips on a CPU); with 2x2 patches (48 values per token)
# and 160k clips on an H100 they reach 85% / 75% (judged.json). At width 128 samples stayed noisy.
MODEL_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 8,
    "attention_head_dim": 32,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "text_dim": TEXT_DIM,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}

# Sampling defaults of the pipeline (the quality benchmark and the demo use them).
DEFAULTS: dict[str, Any] = {
    "height": SIZE,
    "width": SIZE,
    "num_frames": FRAMES,
    "num_inference_steps": 50,
    "guidance_scale": 3.0,
}
SCHEDULER_SHIFT = 2.0


def build_transformer(seed: int = 0) -> WanTransformer3DModel:
    """A freshly initialised reference transformer (the starting point of training)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**MODEL_CONFIG)


class ReferencePipeline(WanPipeline):
    """``WanPipeline`` for the pixel-space reference model: prompts are conditions such as ``"red circle grow"``.

    Example:
        >>> pipe = load_reference_pipeline()
        >>> video = pipe("blue square rotate", generator=torch.Generator().manual_seed(0)).frames  # [1, 17, 32, 32, 3]
    """

    def __init__(self, tokenizer: None = None, text_encoder: None = None, vae: None = None,
                 scheduler: FlowMatchEulerDiscreteScheduler | None = None,
                 transformer: WanTransformer3DModel | None = None, transformer_2: None = None,
                 boundary_ratio: None = None, expand_timesteps: bool = False) -> None:
        # WanPipeline's signature, kept whole because diffusers checks the registered components against it.
        extra = (tokenizer, text_encoder, vae, transformer_2, boundary_ratio)
        if any(c is not None for c in extra) or expand_timesteps:
            raise ValueError("ReferencePipeline takes only a transformer and a scheduler (no text encoder, VAE or "
                             "second transformer)")
        super().__init__(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=transformer)
        self.vae_scale_factor_spatial = 1  # full resolution; time folds by 4 (4k+1 frames), as with Wan's VAE

    def encode_prompt(self, prompt: str | list[str] | None, negative_prompt: str | list[str] | None = None,
                      do_classifier_free_guidance: bool = True, num_videos_per_prompt: int = 1,
                      prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                      max_sequence_length: int = 226, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fixed word embeddings of the conditions; the unconditional input is the null (all-zero) sequence."""
        if negative_prompt is not None:
            raise ValueError("the reference model has no negative prompts: its unconditional input is the null "
                             "sequence; leave negative_prompt unset")
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds = condition_embedding(prompt).repeat_interleave(num_videos_per_prompt, dim=0)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype or prompt_embeds.dtype)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds = null_embedding(prompt_embeds.shape[0]).to(prompt_embeds)
        return prompt_embeds, negative_prompt_embeds

    def __call__(self, prompt: str | list[str] | None = None, *, output_type: str = "np", return_dict: bool = True,
                 **kwargs: Any) -> WanPipelineOutput | tuple:
        """Generate clips; defaults: :data:`DEFAULTS`. ``output_type``: ``"np"``, ``"pil"``, ``"pt"`` or ``"latent"``.

        ``"pt"`` gives ``[B, F, 3, H, W]`` in [0, 1], ``"np"`` ``[B, F, H, W, 3]``, ``"latent"`` the model's
        ``[B, 12, 5, H, W]`` (:func:`~sencache.reference.data.unpack` turns it into ``[B, 3, F, H, W]`` in [-1, 1]).
        """
        for key, value in DEFAULTS.items():
            kwargs.setdefault(key, value)
        latents = super().__call__(prompt, output_type="latent", return_dict=True, **kwargs).frames
        video = latents if output_type == "latent" else self.video_processor.postprocess_video(
            unpack(latents.float()).clamp(-1, 1), output_type=output_type)
        return WanPipelineOutput(frames=video) if return_dict else (video,)


def load_reference_pipeline(checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
                            dtype: torch.dtype = torch.float32) -> ReferencePipeline:
    """The trained reference model in its pipeline (50 flow-matching Euler steps, CFG 3 by default).

    Args:
        checkpoint: directory written by ``python -m sencache.reference.train``; default: the shipped checkpoint.
        device: where the transformer runs.
        dtype: the transformer's dtype.
    """
    path = Path(checkpoint) if checkpoint is not None else CHECKPOINT_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no reference checkpoint in {path} (config.json missing); train one with "
                                f"`python -m sencache.reference.train --out {path}`")
    # from_pretrained would need accelerate for Wan's float32 modules; the checkpoint is small, load it directly.
    transformer = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(path))
    transformer.load_state_dict(load_file(path / "diffusion_pytorch_model.safetensors"), strict=True)
    cast_weights(transformer, dtype)
    transformer = transformer.to(device).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT)
    pipe = ReferencePipeline(transformer=transformer, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
