"""The default ``"chained"`` estimator against a float64 recomputation of its own finite differences (Jt at
``x_{k+1}``, Wan 2.2's expert switch, the last step's backward difference), its cost in transformer rows against a CFG
generation, the drift / gap / contexts / output change it records, and the CPU generator."""

import copy
import itertools

import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache import plumbing
from sencache.adapters import get_adapter
from sencache.calibration_estimators import CHANGE_WINDOW
from tests.helpers import calibration_kwargs, trajectory

STEPS = 6
FAMILIES = (*tiny.ARCHITECTURES, "wan22", "flux", "sd3")


def kwargs(arch, pipe):
    return calibration_kwargs(arch, pipe, STEPS)


@pytest.mark.parametrize("arch", FAMILIES)
def test_chained_profile_matches_float64_finite_differences(arch):
    pipe = tiny.build_pipeline(arch)
    profile = sencache.calibrate(pipe, num_samples=2, seeds=[3, 4], num_inference_steps=STEPS, progress=False,
                                 **kwargs(arch, pipe))
    assert profile.metadata["estimator"] == "chained"
    adapter = get_adapter(pipe.transformer)
    ts = (pipe.scheduler.timesteps.double() * adapter.timestep_scale).tolist()  # in the transformer's units
    assert profile.timesteps.double().tolist() == pytest.approx(ts, rel=1e-6, abs=1e-9)
    batched = adapter.batched_cfg
    f64 = {id(tr): copy.deepcopy(tr).double() for tr in plumbing.transformers(pipe)}

    def cond(y):
        return y[y.shape[0] // 2:] if batched else y

    def f(call, x=None, t=None):
        module, kw = call
        kw = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
        if x is not None:
            kw["hidden_states"] = x.double()
        if t is not None:
            kw["timestep"] = torch.full_like(kw["timestep"], t)
        with torch.no_grad():
            return cond(f64[id(module)](**{**kw, "return_dict": False})[0])

    def norm(a):
        return float(a.norm())

    window = CHANGE_WINDOW
    assert profile.change_samples.shape == (2, STEPS, window)
    for row, seed in enumerate((3, 4)):
        calls, final, per_step = trajectory(pipe, arch, seed, STEPS)
        outputs = [f(call) for call in calls]  # f(x_k, t_k), the sampler's own evaluations
        for k, j in itertools.product(range(STEPS), range(1, window + 1)):
            change = norm(outputs[k + j] - outputs[k]) if k + j < STEPS else 0.0  # 0 past the last step
            assert float(profile.change_samples[row, k, j - 1]) == pytest.approx(change, rel=1e-4, abs=1e-12), (k, j)
        experts = [id(m) for m, _ in calls]
        if arch == "wan22":
            assert len(set(experts)) == 2  # both experts took steps: the switch is exercised
        for k in range(STEPS):
            x_k = calls[k][1]["hidden_states"]
            x_next = calls[k + 1][1]["hidden_states"] if k + 1 < STEPS else (
                torch.cat([final] * 2) if batched else final).to(x_k.dtype)
            f_k = f(calls[k])
            g = f(calls[k], x=x_next)  # f(x_{k+1}, t_k) on step k's transformer
            drift = norm(cond(x_next).double() - cond(x_k).double())
            jx = norm(g - f_k) / drift
            if k + 1 < STEPS and experts[k + 1] == experts[k]:  # at x_{k+1}: the sampler's next evaluation
                jt = norm(f(calls[k + 1]) - g) / abs(ts[k + 1] - ts[k])
            else:  # last step / expert switch: the backward difference at x_k, computed here directly
                jt = norm(f_k - f(calls[k], t=ts[k - 1])) / abs(ts[k] - ts[k - 1])
            # float32 model against its float64 copy on the same inputs (as in tests/test_calibration.py)
            assert float(profile.jx_samples[row, k]) == pytest.approx(jx, rel=1e-4), (k, "jx")
            assert float(profile.jt_samples[row, k]) == pytest.approx(jt, rel=1e-4), (k, "jt")
            assert float(profile.drift_samples[row, k]) == pytest.approx(drift, rel=1e-5), (k, "drift")
        contexts = per_step * (2 if batched else 1)
        assert profile.metadata["guidance_contexts"] == contexts
    gaps = [abs(ts[k + 1] - ts[k]) for k in range(STEPS - 1)]
    assert profile.dt.tolist() == pytest.approx([*gaps, gaps[-1]], rel=1e-6)
    torch.testing.assert_close(profile.drift, profile.drift_samples.mean(0))
    torch.testing.assert_close(profile.drift_std, profile.drift_samples.std(0, correction=0))
    assert bool((profile.drift_std > 0).any())  # two seeds, two trajectories


def rows_counter(pipe):
    """Counts transformer rows (batch entries x evaluations) at the first block of every transformer, which every
    evaluation runs, the calibration's extra ones included."""
    rows, handles = [0], []
    for tr in plumbing.transformers(pipe):
        block = get_adapter(tr).block_lists(tr)[0][0]

        def count(_m, a, kw):
            rows[0] += (a[0] if a else kw["hidden_states"]).shape[0]

        handles.append(block.register_forward_pre_hook(count, with_kwargs=True))
    return rows, handles


@pytest.mark.parametrize("arch", ["wan", "cogvideox", "ltx", "wan22", "sd3", "cogview4"])
def test_chained_costs_at_most_one_and_a_half_cfg_generations(arch):
    pipe = tiny.build_pipeline(arch)
    seeds = [0, 1]
    rows, handles = rows_counter(pipe)
    try:
        for seed in seeds:  # the same samples, generated with CFG
            pipe(**kwargs(arch, pipe), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
                 output_type="latent")
        generation, rows[0] = rows[0], 0
        sencache.calibrate(pipe, num_samples=2, seeds=seeds, num_inference_steps=STEPS, progress=False,
                           **kwargs(arch, pipe))
        chained, rows[0] = rows[0], 0
        sencache.calibrate(pipe, num_samples=2, seeds=seeds, num_inference_steps=STEPS, progress=False,
                           estimator="central", **kwargs(arch, pipe))
        central = rows[0]
    finally:
        for h in handles:
            h.remove()
    assert generation == 2 * STEPS * 2  # two samples, two CFG rows per step
    assert chained <= 1.5 * generation, (chained, generation)
    assert chained == 1.5 * generation  # exactly one conditional row per step and sample
    assert central == 2 * generation


def test_calibrate_draws_noise_on_the_cpu(monkeypatch):
    """A CPU generator per seed (diffusers' advice): the same noise, so the same profile, on every device."""
    pipe = tiny.build_pipeline("wan")
    seen, call = [], type(pipe).__call__

    def spy(self, *a, generator=None, **kw):
        seen.append((generator.device.type, generator.initial_seed()))
        return call(self, *a, generator=generator, **kw)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    sencache.calibrate(pipe, num_samples=2, seeds=[5, 9], num_inference_steps=3, progress=False, **kwargs("wan", pipe))
    assert seen == [("cpu", 5), ("cpu", 9)]


def test_estimator_name_is_checked():
    pipe = tiny.build_pipeline("wan")
    with pytest.raises(ValueError, match="estimator must be one of"):
        sencache.calibrate(pipe, num_samples=1, num_inference_steps=3, progress=False, estimator="forward",
                           **kwargs("wan", pipe))
    assert plumbing.find_hook(pipe.transformer, "sencache_calibration") is None  # nothing left behind
