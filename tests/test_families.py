"""Every family beyond the first three, on tiny offline pipelines: Flux, Qwen-Image, HunyuanVideo, SD3, Mochi,
CogView4 and Wan 2.2's two experts. eps=0 is bitwise uncached, a hand-made profile gives the hand-computed timeline,
every block of every list runs or is skipped together, and removing SenCache restores the pipeline bit for bit."""

import math

import pytest
import torch
from diffusers import FirstBlockCacheConfig

import sencache
from sencache import offline_pipelines as tiny
from sencache import plumbing
from sencache.adapters import get_adapter
from tests.helpers import STEPS

FAMILIES = tiny.NEW_FAMILIES


@pytest.fixture(scope="module")
def built():
    return {arch: tiny.build_pipeline(arch) for arch in FAMILIES}


@pytest.fixture
def fam(built):
    yield built
    for pipe in built.values():
        sencache.remove_sencache(pipe)


def call(pipe, arch, **kw):
    kw = tiny.call_kwargs(arch, pipe, num_inference_steps=STEPS, output_type="latent", **kw)
    return tiny.output_of(arch, pipe(**kw))


def profile(pipe, jx=1.0, jt=1e-2):
    scale = get_adapter(pipe.transformer).timestep_scale
    ts = torch.linspace(1000, 0, 5) * scale
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.full_like(ts, jx), jt=torch.full_like(ts, jt / scale),
                                       metadata={"transformer_class": type(pipe.transformer).__name__})


class Probe:
    """Per transformer call: the latent shape and the timestep (sample 0); per block: how often it computed."""

    def __init__(self, pipe):
        self.calls, self.handles, self.runs = [], [], {}
        for tr in plumbing.transformers(pipe):
            self.handles.append(tr.register_forward_pre_hook(self._call, with_kwargs=True))
            for attr in get_adapter(tr).block_attrs:
                for i, block in enumerate(getattr(tr, attr)):
                    inner = next(block.children())  # runs only when the block itself computes
                    key = (id(tr), attr, i)
                    self.runs[key] = 0
                    self.handles.append(inner.register_forward_hook(lambda *a, k=key: self._ran(k)))

    def _call(self, module, args, kwargs):
        t = kwargs["timestep"]
        self.calls.append((tuple(kwargs["hidden_states"].shape), float(t.reshape(-1)[0])))

    def _ran(self, key):
        self.runs[key] += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def uncached(built):
    out = {}
    for arch, pipe in built.items():
        probe = Probe(pipe)
        out[arch] = (call(pipe, arch), probe.calls)
        probe.remove()
    return out


@pytest.mark.parametrize("arch", FAMILIES)
def test_eps_zero_is_bitwise_uncached(arch, fam, uncached):
    pipe = fam[arch]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe), eps=0.0, eps_start=0.0))
    assert torch.equal(call(pipe, arch), uncached[arch][0])
    st = sencache.get_stats(pipe)
    assert st.num_steps == STEPS and st.computed == [True] * STEPS  # both experts' steps for Wan 2.2
    assert st.block_stack_calls == len(uncached[arch][1])


@pytest.mark.parametrize("arch", FAMILIES)
def test_hand_computed_timeline_blocks_together_and_remove(arch, fam, uncached):
    """With Jx = 0 the score is Jt * |t - t_ref|: every decision is re-derived in float64 from the timesteps the
    transformer received; each block of each list ran exactly on the computed calls; removal restores the bits."""
    pipe = fam[arch]
    want, calls = uncached[arch]
    ts = [t for _, t in calls]
    leading = sorted(set(ts), key=ts.index)  # one timestep per step, in order (other calls repeat it)
    assert len(leading) == STEPS
    dts = sorted(abs(a - b) for a, b in zip(leading, leading[1:], strict=False))
    jt, k_cap = 1.0 / dts[len(dts) // 2], 2
    n = math.prod(calls[0][0][1:])
    eps = 1.5 / math.sqrt(n)  # skip while the time since the last computed step stays under 1.5 median gaps
    cfg = sencache.SenCacheConfig(profile=profile(pipe, jx=0.0, jt=jt * get_adapter(pipe.transformer).timestep_scale),
                                  eps=eps, eps_start=eps, max_consecutive_skips=k_cap)
    sencache.apply_sencache(pipe, cfg)
    probe = Probe(pipe)
    out = call(pipe, arch)
    probe.remove()
    st = sencache.get_stats(pipe)

    adapter = get_adapter(pipe.transformer)
    first_steps = {0}
    if arch == "wan22":  # the second expert's first step is computed as well
        first_steps.add(next(i for i, t in enumerate(leading) if t < pipe.config.boundary_ratio * 1000))
    expected, t_ref, skips = [], None, 0
    for i, t in enumerate(leading):
        score = 0.0 if t_ref is None else jt * abs(t - t_ref)
        assert t_ref is None or abs(score - 1.5) > 1e-3, "ambiguous test setup: a score sits on the threshold"
        forced = i in first_steps or i >= STEPS - adapter.force_last_steps
        compute = forced or score > 1.5 or skips >= k_cap
        expected.append(compute)
        t_ref, skips = (t, 0) if compute else (t_ref, skips + 1)
    assert st.computed == expected and 0 < st.skipped < STEPS, (st.timeline(), expected)
    assert not torch.equal(out, want)
    per_step = len(calls) // STEPS
    assert st.block_stack_calls == per_step * st.nfe
    runs = set(probe.runs.values())
    if arch == "wan22":  # each expert's blocks ran on its own computed steps
        assert len(runs) == 2 and sum(runs) == st.block_stack_calls
    else:
        assert runs == {st.block_stack_calls}
    sencache.remove_sencache(pipe)
    assert torch.equal(call(pipe, arch), want)


def test_wan22_experts_keep_their_own_state(fam):
    """Both experts are hooked by apply_sencache(pipe), each with its own decision state and residuals; one call's
    statistics cover every step; calling again gives the same bits."""
    pipe = fam["wan22"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe, jx=0.2), eps=0.5, eps_start=0.5))
    hooks = [sencache.hooks._hook(tr) for tr in (pipe.transformer, pipe.transformer_2)]
    assert all(h is not None for h in hooks) and hooks[0] is not hooks[1]
    first = call(pipe, "wan22")
    st = sencache.get_stats(pipe)
    assert len(st.computed) == STEPS and st.skipped > 0
    assert hooks[0].clock.state is not hooks[1].clock.state
    assert torch.equal(call(pipe, "wan22"), first)
    assert sencache.get_stats(pipe).computed == st.computed


@pytest.mark.parametrize("arch", ["flux", "hunyuanvideo"])
def test_true_cfg_follows_the_cond_decision(arch, fam):
    """With a negative prompt and true CFG the pipeline adds an "uncond" call per step: it follows the decision of
    the "cond" call with its own residual; eps=0 stays bitwise uncached."""
    pipe = fam[arch]
    want = call(pipe, arch, true_cfg_scale=4.0)
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe), eps=0.0, eps_start=0.0))
    assert torch.equal(call(pipe, arch, true_cfg_scale=4.0), want)
    assert sencache.get_stats(pipe).block_stack_calls == 2 * STEPS


def test_diffusers_cache_after_sencache_is_refused(fam):
    pipe = fam["flux"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe)))
    with pytest.raises(ValueError, match="already been enabled"):
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    sencache.remove_sencache(pipe)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))  # allowed again once SenCache is gone
    try:
        with pytest.raises(ValueError, match="diffusers cache is already enabled"):
            sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe)))
    finally:
        pipe.transformer.disable_cache()


@pytest.mark.slow  # torch.compile: seconds per family
@pytest.mark.parametrize("arch", ["flux", "sd3", "hunyuanvideo"])  # two lists with split views; a None stream;
def test_compiled_equals_eager_without_graph_breaks(arch, fam):  # a transposed hidden stream
    from torch._dynamo.utils import counters

    pipe = fam[arch]
    cfg = sencache.SenCacheConfig(profile=profile(pipe, jx=0.2), eps=0.5, eps_start=0.5)
    sencache.apply_sencache(pipe, cfg)
    want, want_stats = call(pipe, arch), sencache.get_stats(pipe)
    assert 0 < want_stats.skipped < STEPS
    counters.clear()
    sencache.apply_sencache(pipe, cfg, mode="compiled", compile_options={"backend": "aot_eager"})
    try:
        for _ in range(2):  # the first call compiles; the second replays the variants it compiled
            assert torch.equal(call(pipe, arch), want)
            assert sencache.get_stats(pipe).computed == want_stats.computed
        assert sencache.hooks._hook(pipe.transformer).mode == "compiled"
        assert not counters["graph_break"], dict(counters["graph_break"])
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("arch", FAMILIES)
def test_graph_mode_logic_equals_eager_with_replaying_stand_ins(arch, fam, replaying):
    """Graph mode's capture and replay logic with the CPU stand-ins of the CUDA steps (conftest.replaying): the
    decisions and the output of eager mode, including two block lists, a stream that ends as None and two experts."""
    pipe = fam[arch]
    cfg = sencache.SenCacheConfig(profile=profile(pipe, jx=0.2), eps=0.5, eps_start=0.5)
    sencache.apply_sencache(pipe, cfg)
    want, want_stats = call(pipe, arch), sencache.get_stats(pipe)
    assert 0 < want_stats.skipped < STEPS
    sencache.apply_sencache(pipe, cfg, mode="graph")
    for _ in range(2):  # the first call captures, the second replays
        assert torch.equal(call(pipe, arch), want)
        stats = sencache.get_stats(pipe)
        # a call's first step of each transformer is forced; its score is measured against whatever reference the
        # previous call left
        firsts = [i for i, f in enumerate(want_stats.forced) if f]
        assert stats.computed == want_stats.computed and stats.forced == want_stats.forced
        assert [s for i, s in enumerate(stats.scores) if i not in firsts] == [
            s for i, s in enumerate(want_stats.scores) if i not in firsts]
    assert replaying and all(sencache.hooks._hook(tr).mode == "graph" for tr in plumbing.transformers(pipe))


def test_an_adapter_registered_by_the_user(fam, uncached):
    """The README's way to add a family: a transformer class SenCache does not know is refused with the recipe, and
    works once an Adapter for it is registered."""
    from sencache.adapters import _ADAPTERS, Adapter, register

    pipe = fam["cogview4"]
    original = type(pipe.transformer)
    mine = type("MyDiTTransformer2DModel", (original,), {})
    pipe.transformer.__class__ = mine
    try:
        with pytest.raises(ValueError, match=r"does not support MyDiTTransformer2DModel.*register"):
            sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe)))
        register(lambda: Adapter(model_class="MyDiTTransformer2DModel", blocks=("transformer_blocks",),
                                 guidance="separate"))
        prof = sencache.SensitivityProfile(profile(pipe).timesteps, torch.ones(5), torch.full((5,), 1e-2),
                                           metadata={"transformer_class": "MyDiTTransformer2DModel"})
        sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=prof, eps=0.0, eps_start=0.0))
        assert torch.equal(call(pipe, "cogview4"), uncached["cogview4"][0])
        assert sencache.get_stats(pipe).nfe == STEPS
    finally:
        sencache.remove_sencache(pipe)
        pipe.transformer.__class__ = original
        _ADAPTERS.pop("MyDiTTransformer2DModel", None)


def test_skip_layer_guidance_is_refused_not_cached_wrongly(fam):
    """SD3's skip-layer guidance runs the transformer with some blocks left out: the stack cannot be cached as one,
    so such a call raises instead of returning a cached stack output."""
    pipe = fam["sd3"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe)))
    with pytest.raises(ValueError, match="skip_layers"):
        call(pipe, "sd3", skip_guidance_layers=[0], skip_layer_guidance_start=0.0)
