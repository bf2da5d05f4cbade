"""Mochi (``MochiTransformer3DModel``): blocks update both streams; batched CFG."""

from sencache.adapters import Adapter, register


@register
def mochi() -> Adapter:
    return Adapter(model_class="MochiTransformer3DModel", blocks="transformer_blocks", guidance="batched")
