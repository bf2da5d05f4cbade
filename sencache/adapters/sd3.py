"""Stable Diffusion 3 (``SD3Transformer2DModel``): joint blocks; the last one returns no encoder states; batched
CFG and no cache context (one implicit context)."""

from sencache.adapters import Adapter, register


@register
def sd3() -> Adapter:
    return Adapter(model_class="SD3Transformer2DModel", blocks="transformer_blocks", guidance="batched",
                   uncacheable_args=("block_controlnet_hidden_states", "skip_layers"))
