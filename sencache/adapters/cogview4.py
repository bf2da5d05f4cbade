"""CogView4 (``CogView4Transformer2DModel``): blocks update both streams; CFG as "cond" and "uncond" calls."""

from sencache.adapters import Adapter, register


@register
def cogview4() -> Adapter:
    return Adapter(model_class="CogView4Transformer2DModel", blocks="transformer_blocks", guidance="separate")
