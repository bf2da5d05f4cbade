"""FLUX.1 (``FluxTransformer2DModel``): dual-stream ``transformer_blocks`` then single-stream
``single_transformer_blocks``, one stack; guidance-distilled (true CFG adds an "uncond" call); 4-D packed latents."""

from sencache.adapters import Adapter, register


@register
def flux() -> Adapter:
    return Adapter(model_class="FluxTransformer2DModel", blocks=("transformer_blocks", "single_transformer_blocks"),
                   guidance="distilled", optional_blocks=("single_transformer_blocks",),
                   timestep_scale=1e-3,
                   uncacheable_args=("controlnet_block_samples", "controlnet_single_block_samples"))
