"""The tiny offline pipelines of the families added for issue 14 (``offline_pipelines.NEW_FAMILIES``).

Each family is built once per session; every test runs a few short calls with ``output_type="latent"`` (one decode
checks the ``"pt"`` output's shape), so the module takes seconds on a 2-core CPU.
"""

import pytest
import torch

from sencache import offline_pipelines as tiny

STEPS = 4

# Latent shape (batch 1) of each family's default geometry; images come back as (1, 3, H, W), videos as (1, F, 3, H, W).
LATENT_SHAPES = {
    "flux": (1, 16, 4),  # packed: 4x4 tokens of 2x2 x 1 channel
    "qwenimage": (1, 4, 16),  # packed: 2x2 tokens of 2x2 x 4 channels
    "hunyuanvideo": (1, 4, 3, 2, 2),
    "sd3": (1, 4, 8, 8),
    "mochi": (1, 12, 2, 2, 2),
    "cogview4": (1, 4, 8, 8),
    "wan22": (1, 16, 3, 4, 4),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tensors here are tiny: one intra-op thread is faster than two, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def family_pipes():
    return {arch: tiny.build_pipeline(arch) for arch in tiny.NEW_FAMILIES}


def latent(pipe, arch, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return tiny.output_of(arch, pipe(**tiny.call_kwargs(arch, pipe, output_type="latent", **kw)))


def count_calls(pipe):
    """Forward pre-hooks counting the calls of each transformer; returns (counts, handles)."""
    counts, handles = {}, []
    for name in ("transformer", "transformer_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            counts[name] = 0

            def hook(_module, _args, name=name):
                counts[name] += 1

            handles.append(module.register_forward_pre_hook(hook))
    return counts, handles


def test_tables():
    assert tiny.ARCHITECTURES == ("wan", "cogvideox", "ltx")
    assert tiny.ALL_ARCHITECTURES == tiny.ARCHITECTURES + tiny.NEW_FAMILIES
    assert set(LATENT_SHAPES) == set(tiny.NEW_FAMILIES)
    with pytest.raises(ValueError, match="supported architectures: wan, cogvideox, ltx, flux"):
        tiny.build_pipeline("sdxl")


@pytest.mark.parametrize("arch", tiny.NEW_FAMILIES)
def test_facts_name_the_model(family_pipes, arch):
    facts, transformer = tiny.facts(arch), family_pipes[arch].transformer
    assert type(transformer).__name__ == facts.transformer
    for attr in facts.block_lists:
        blocks = getattr(transformer, attr)
        assert isinstance(blocks, torch.nn.ModuleList) and 1 <= len(blocks) <= 2
        assert {type(b).__name__ for b in blocks} <= set(facts.block_returns)


@pytest.mark.parametrize("arch", tiny.NEW_FAMILIES)
def test_runs_deterministic_and_seeded(family_pipes, arch):
    pipe = family_pipes[arch]
    first = latent(pipe, arch)
    assert tuple(first.shape) == LATENT_SHAPES[arch] and torch.isfinite(first).all()
    assert torch.equal(first, latent(pipe, arch)), "two identical calls differ"
    assert not torch.equal(first, latent(pipe, arch, seed=1)), "another seed gives the same output"
    assert tuple(latent(pipe, arch, batch_size=2, num_inference_steps=2).shape) == (2, *LATENT_SHAPES[arch][1:])


@pytest.mark.parametrize("arch", tiny.NEW_FAMILIES)
def test_decoded_output(family_pipes, arch):
    pipe = family_pipes[arch]
    kw = tiny.call_kwargs(arch, pipe, num_inference_steps=2)
    out = tiny.output_of(arch, pipe(**kw))
    h, w = kw["height"], kw["width"]
    expected = (1, kw["num_frames"], 3, h, w) if "num_frames" in kw else (1, 3, h, w)
    assert tuple(out.shape) == expected and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("arch", tiny.NEW_FAMILIES)
def test_build_is_seeded(arch):
    a, b, c = (tiny.build_pipeline(arch, seed=s).transformer.state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


@pytest.mark.parametrize("arch", ["flux", "hunyuanvideo"])
def test_true_cfg_override(family_pipes, arch):
    pipe = family_pipes[arch]
    counts, handles = count_calls(pipe)
    try:
        distilled = latent(pipe, arch)
        assert counts["transformer"] == STEPS
        true_cfg = latent(pipe, arch, true_cfg_scale=4.0)
        assert counts["transformer"] == STEPS + 2 * STEPS
    finally:
        for handle in handles:
            handle.remove()
    assert not torch.equal(distilled, true_cfg)


def test_wan22_runs_both_experts(family_pipes):
    pipe = family_pipes["wan22"]
    assert pipe.transformer_2 is not None and pipe.config.boundary_ratio == 0.875
    one, two = pipe.transformer.state_dict(), pipe.transformer_2.state_dict()
    assert any(not torch.equal(one[k], two[k]) for k in one if one[k].numel() > 1)
    counts, handles = count_calls(pipe)
    try:
        latent(pipe, "wan22", num_inference_steps=8)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == {"transformer": 8, "transformer_2": 8}  # 4 steps each, cond + uncond


def test_existing_families_output_of():
    pipe = tiny.build_pipeline("cogvideox")
    result = pipe(**tiny.call_kwargs("cogvideox", pipe, num_inference_steps=1))
    assert tiny.output_of("cogvideox", result) is result.frames
