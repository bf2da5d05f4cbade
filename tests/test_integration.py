"""SenCache on real (tiny, random-weight) diffusers pipelines: Wan, CogVideoX and LTX-Video."""

import math
import warnings

import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache.adapters import get_adapter
from tests.helpers import STEPS, flat_profile, run

ARCHS = tiny.ARCHITECTURES


@pytest.fixture(scope="module")
def uncached(session_pipes):
    return {arch: run(session_pipes[arch], arch) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_eps_zero_is_bitwise_uncached(arch, pipes, uncached):
    pipe = pipes[arch]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe, jx=1.0), eps=0.0, eps_start=0.0))
    out = run(pipe, arch)
    assert torch.equal(out, uncached[arch])
    st = sencache.get_stats(pipe)
    assert st.computed == [True] * STEPS and st.nfe == STEPS


@pytest.mark.parametrize("arch", ARCHS)
def test_skipping_changes_output_and_remove_restores_bitwise(arch, pipes, uncached):
    pipe = pipes[arch]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0))
    out = run(pipe, arch)
    st = sencache.get_stats(pipe)
    assert st.skipped > 0 and torch.isfinite(out).all()
    assert not torch.equal(out, uncached[arch])
    # Wan runs two contexts (cond, uncond): each computed step evaluates the block stack twice.
    contexts = 1 if get_adapter(pipe.transformer).batched_cfg else 2
    assert st.block_stack_calls == contexts * st.nfe
    sencache.remove_sencache(pipe)
    assert torch.equal(run(pipe, arch), uncached[arch])


def test_handcrafted_profile_gives_hand_computed_sequence(pipes):
    """CogVideoX's DDIM schedule is uniform (999, 899, ..., 99): with Jx = 0 and Jt = 0.01 the score after m steps
    since the last computed one is exactly 0.01 * 100 * m = m; with a threshold of 2.5 two steps are skipped in a row,
    and the last step is forced (CogVideoX's default)."""
    pipe = pipes["cogvideox"]
    run(pipe, "cogvideox")
    assert pipe.scheduler.timesteps.tolist() == [999 - 100 * i for i in range(STEPS)]
    n = 3 * 4 * 2 * 2  # elements per sample of the tiny CogVideoX latent
    eps = 2.5 / math.sqrt(n)
    for k, expected in ((3, "F..C..C..F"), (1, "F.C.C.C.CF"), (0, "FCCCCCCCCF")):
        cfg = sencache.SenCacheConfig(profile=flat_profile(pipe, jx=0.0, jt=0.01), eps=eps, eps_start=eps,
                                      max_consecutive_skips=k)
        sencache.apply_sencache(pipe, cfg)
        run(pipe, "cogvideox")
        st = sencache.get_stats(pipe)
        assert st.timeline() == expected, k
        skipped_scores = [s for s, c in zip(st.scores, st.computed, strict=True) if not c]
        assert all(row == [1.0, 1.0] or row == [2.0, 2.0] for row in skipped_scores)


@pytest.mark.parametrize("arch", ARCHS)
def test_consecutive_skips_are_capped(arch, pipes):
    pipe = pipes[arch]
    for k in (1, 2, 3):
        sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=1e6, eps_start=1e6,
                                                              max_consecutive_skips=k))
        run(pipe, arch)
        line = sencache.get_stats(pipe).timeline()
        assert "." * (k + 1) not in line and "." * k in line, (k, line)


def test_schedule_simulation_matches_stats_wan(pipes):
    """Wan's shifted schedule is non-uniform: re-derive every decision in float64 Python from the timesteps."""
    pipe = pipes["wan"]
    jt, k_cap, eps = 1e-3, 2, 0.004
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe, jx=0.0, jt=jt), eps=eps,
                                                          eps_start=eps, max_consecutive_skips=k_cap))
    run(pipe, "wan")
    ts = pipe.scheduler.timesteps.tolist()
    thr = eps * math.sqrt(16 * 3 * 4 * 4)
    expected, t_ref, skips = [], None, 0
    for i, t in enumerate(ts):
        score = 0.0 if t_ref is None else jt * abs(t - t_ref)
        assert t_ref is None or abs(score - thr) > 1e-4 * thr, "ambiguous test setup: a score sits on the threshold"
        compute = i == 0 or score > thr or skips >= k_cap
        expected.append(compute)
        t_ref, skips = (t, 0) if compute else (t_ref, skips + 1)
    st = sencache.get_stats(pipe)
    assert st.computed == expected and 0 < st.skipped < STEPS


def test_state_resets_between_calls_and_pipelines_are_separate(pipes):
    a, b = tiny.build_pipeline("wan"), tiny.build_pipeline("wan")
    sencache.apply_sencache(a, sencache.SenCacheConfig(profile=flat_profile(a), eps=10.0, eps_start=10.0))
    sencache.apply_sencache(b, sencache.SenCacheConfig(profile=flat_profile(b), eps=0.0, eps_start=0.0))
    first = run(a, "wan")
    run(b, "wan")
    second = run(a, "wan")
    assert torch.equal(first, second)  # nothing leaks from the previous call of a, nor from b
    assert sencache.get_stats(a).timeline() == sencache.get_stats(a, call=-2).timeline()
    assert sencache.get_stats(b).skipped == 0 and sencache.get_stats(a).skipped > 0


def test_exception_mid_call_leaves_no_stale_state(pipes):
    pipe = pipes["ltx"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0))
    clean = run(pipe, "ltx")

    def boom(_pipe, i, _t, _kw):
        if i == 4:
            raise RuntimeError("interrupted")
        return {}

    with pytest.raises(RuntimeError, match="interrupted"):
        pipe(**tiny.call_kwargs("ltx", pipe, num_inference_steps=STEPS), callback_on_step_end=boom)
    after = run(pipe, "ltx")
    assert torch.equal(after, clean)
    assert sencache.get_stats(pipe).timeline() == sencache.get_stats(pipe, call=0).timeline()


@pytest.mark.parametrize("change", [dict(batch_size=2), dict(height=64, width=64), dict(num_inference_steps=6)])
def test_change_of_shape_or_steps_resets(change, pipes):
    pipe = pipes["wan"]
    fresh = tiny.build_pipeline("wan")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0)
    sencache.apply_sencache(pipe, cfg)
    sencache.apply_sencache(fresh, cfg)
    run(pipe, "wan")
    assert torch.equal(run(pipe, "wan", **change), run(fresh, "wan", **change))


def test_batch_of_prompts_decides_per_sample(pipes):
    """Different prompts in one batch: per-sample scores; a step is computed when any sample asks for it."""
    pipe = pipes["wan"]
    prof = flat_profile(pipe, jx=1.0, jt=1e-3)
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=prof, eps=0.0, eps_start=0.0))
    run(pipe, "wan", batch_size=2)
    s0, s1 = sencache.get_stats(pipe).scores[1]  # step 1 depends only on step 0, which is always computed
    assert s0 != s1
    n = 16 * 3 * 4 * 4
    eps = (s0 + s1) / 2 / math.sqrt(n)  # a threshold between the two samples' scores at step 1
    k_cap = 3
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=prof, eps=eps, eps_start=eps,
                                                          max_consecutive_skips=k_cap))
    run(pipe, "wan", batch_size=2)
    st = sencache.get_stats(pipe)
    assert all(len(row) == 2 for row in st.scores)
    assert st.wants_compute[1] in ([True, False], [False, True]) and st.computed[1]
    skips = 0
    for computed, forced, wants in zip(st.computed, st.forced, st.wants_compute, strict=True):
        assert computed == (forced or any(wants) or skips >= k_cap)
        skips = 0 if computed else skips + 1


def test_nonfinite_latent_is_computed_and_warns_once(pipes):
    pipe = pipes["wan"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=1e6, eps_start=1e6))

    def poison(_pipe, i, _t, kw):
        if i == 3:
            kw["latents"][0, 0, 0, 0, 0] = float("nan")
        return kw

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(**tiny.call_kwargs("wan", pipe, num_inference_steps=STEPS), callback_on_step_end=poison)
    msgs = [w for w in caught if "NaN or Inf" in str(w.message)]
    assert len(msgs) == 1
    st = sencache.get_stats(pipe)
    assert st.computed[4:] == [True] * (STEPS - 4)
    assert st.skipped > 0  # steps before the NaN were skipped as usual


def test_unsupported_transformer_lists_supported():
    class Other(torch.nn.Module):
        pass

    ts = torch.linspace(1000, 0, 3)
    prof = sencache.SensitivityProfile(timesteps=ts, jx=torch.ones(3), jt=torch.ones(3))
    with pytest.raises(ValueError, match="WanTransformer3DModel"):
        sencache.apply_sencache(Other(), sencache.SenCacheConfig(profile=prof))


def test_profile_for_another_model_is_rejected(pipes):
    prof = flat_profile(pipes["wan"])
    with pytest.raises(ValueError, match="calibrated for WanTransformer3DModel"):
        sencache.apply_sencache(pipes["ltx"], sencache.SenCacheConfig(profile=prof))


def test_bare_transformer_needs_step_count_and_checks_devices(pipes):
    pipe = pipes["wan"]
    tr = pipe.transformer
    sencache.apply_sencache(tr, sencache.SenCacheConfig(profile=flat_profile(pipe)))
    x = torch.randn(1, 16, 3, 4, 4)
    ehs = torch.randn(1, 16, 32)
    with pytest.raises(ValueError, match="number of denoising steps"):
        tr(hidden_states=x, timestep=torch.tensor([999.0]), encoder_hidden_states=ehs)
    sencache.apply_sencache(tr, sencache.SenCacheConfig(profile=flat_profile(pipe), num_inference_steps=4))
    with pytest.raises(ValueError, match="same device"):
        tr(hidden_states=x, timestep=torch.tensor([999.0], device="meta"), encoder_hidden_states=ehs)
    for t in (999.0, 700.0, 400.0, 100.0):
        out = tr(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=ehs, return_dict=False)[0]
        assert out.shape == x.shape
    assert sencache.get_stats(tr).num_steps == 4 and len(sencache.get_stats(tr).computed) == 4


@pytest.mark.parametrize("arch", ARCHS)
def test_without_guidance(arch, pipes):
    """guidance_scale=1: one context (Wan) or an undoubled batch (CogVideoX/LTX); same guarantees."""
    pipe = pipes[arch]
    ref = run(pipe, arch, guidance_scale=1.0)
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe, jx=1.0), eps=0.0, eps_start=0.0))
    assert torch.equal(run(pipe, arch, guidance_scale=1.0), ref)
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0))
    out = run(pipe, arch, guidance_scale=1.0)
    st = sencache.get_stats(pipe)
    assert st.skipped > 0 and st.block_stack_calls == st.nfe and torch.isfinite(out).all()


def test_change_of_dtype_resets():
    """A new latent dtype starts a new call: the state is re-allocated and the first step is forced again."""
    pipe = tiny.build_pipeline("wan")
    tr = pipe.transformer
    sencache.apply_sencache(tr, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0,
                                                        num_inference_steps=4))
    x = torch.randn(1, 16, 3, 4, 4)
    ehs = torch.randn(1, 16, 32)
    for t in (999.0, 700.0):
        tr(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=ehs)
    assert sencache.get_stats(tr).timeline() == "F."
    tr.double()
    out = tr(hidden_states=x.double(), timestep=torch.tensor([400.0]), encoder_hidden_states=ehs.double())[0]
    assert out.dtype == torch.float64
    assert sencache.get_stats(tr).timeline() == "F" and sencache.get_stats(tr, call=-2).timeline() == "F."
