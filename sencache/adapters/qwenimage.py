"""Qwen-Image (``QwenImageTransformer2DModel``): one list of dual-stream blocks; true CFG as "cond" and
"uncond" calls."""

from sencache.adapters import Adapter, register


@register
def qwenimage() -> Adapter:
    return Adapter(model_class="QwenImageTransformer2DModel", blocks="transformer_blocks", guidance="separate",
                   timestep_scale=1e-3,
                   uncacheable_args=("controlnet_block_samples",))
