"""sencache.residual_bytes: the bytes of the residual cache, counted against the shapes the blocks carry: one residual
per CFG context during a call, freed at its end in eager mode, kept with each capture in graph mode (the CPU
stand-ins of conftest)."""

import pytest

import sencache
from tests.helpers import flat_profile, run


def _during_and_after(pipe):
    """The residual bytes at the end of the first and the last step of a call, after it, and the expected size of one
    context's residual (``[1, tokens, heads * head_dim]`` float32 for Wan) from the call's latent."""
    seen, latents = [], []

    def on_step_end(_pipe, i, _t, tensors):
        seen.append(sencache.residual_bytes(pipe))
        latents.append(tensors["latents"].shape)
        return {}

    run(pipe, "wan", num_inference_steps=4, callback_on_step_end=on_step_end)
    _, _, f, h, w = latents[0]
    p_t, p_h, p_w = pipe.transformer.config.patch_size
    config = pipe.transformer.config
    one = (f // p_t) * (h // p_h) * (w // p_w) * config.num_attention_heads * config.attention_head_dim * 4
    return seen, sencache.residual_bytes(pipe), one


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_residual_bytes_count_one_residual_per_context(pipes, mode, replaying):
    pipe = pipes["wan"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0),
                            mode=mode)
    seen, after, one = _during_and_after(pipe)
    assert seen == [2 * one] * 4  # cond and uncond, computed or skipped steps alike
    assert after == (0 if mode == "eager" else 2 * one)  # eager frees them with the call; captures keep theirs
    sencache.remove_sencache(pipe)
    with pytest.raises(ValueError, match="not applied"):
        sencache.residual_bytes(pipe)
