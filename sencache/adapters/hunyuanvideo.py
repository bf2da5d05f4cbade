"""HunyuanVideo (``HunyuanVideoTransformer3DModel``): dual-stream ``transformer_blocks`` then single-stream
``single_transformer_blocks``, one stack (the text refiner before it keeps running); guidance-distilled."""

from sencache.adapters import Adapter, register


@register
def hunyuanvideo() -> Adapter:
    return Adapter(model_class="HunyuanVideoTransformer3DModel",
                   blocks=("transformer_blocks", "single_transformer_blocks"), guidance="distilled",
                   optional_blocks=("single_transformer_blocks",))
