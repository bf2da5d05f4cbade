"""Wan 2.1 (``WanTransformer3DModel``): blocks in ``blocks`` return hidden states only; CFG as two calls."""

from sencache.adapters import Adapter, register


@register
def wan() -> Adapter:
    return Adapter(model_class="WanTransformer3DModel", blocks="blocks", guidance="separate")
