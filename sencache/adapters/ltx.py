"""LTX-Video (``LTXVideoTransformer3DModel``): blocks return hidden states only; batched CFG; last step forced."""

from sencache.adapters import Adapter, register


@register
def ltx() -> Adapter:
    return Adapter(model_class="LTXVideoTransformer3DModel", blocks="transformer_blocks", guidance="batched",
                   force_last_steps=1)
