"""CogVideoX (``CogVideoXTransformer3DModel``): blocks update both streams; batched CFG; the last step forced."""

from sencache.adapters import Adapter, register


@register
def cogvideox() -> Adapter:
    return Adapter(model_class="CogVideoXTransformer3DModel", blocks="transformer_blocks", guidance="batched",
                   force_last_steps=1)
