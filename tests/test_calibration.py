"""``calibrate`` against a direct float64 computation of the same finite differences."""

import copy

import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny

STEPS = 5


def kwargs(arch, pipe, seed=0):
    kw = tiny.call_kwargs(arch, pipe, num_inference_steps=STEPS, seed=seed)
    for k in ("generator", "num_inference_steps", "output_type"):
        kw.pop(k)
    return kw


def record_trajectory(pipe, arch, seed):
    """Run the pipeline (same seed as calibrate's sample) and record the conditional transformer inputs per step and
    the latent after the last step."""
    calls, finals = [], []

    def pre_hook(_module, args, kw):
        calls.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})

    def on_end(_pipe, i, _t, tensors):
        finals.append(tensors["latents"].clone())
        return {}

    handle = pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        pipe(**kwargs(arch, pipe), num_inference_steps=STEPS, generator=torch.Generator().manual_seed(seed),
             output_type="latent", callback_on_step_end=on_end)
    finally:
        handle.remove()
    return calls, finals


@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
def test_calibrated_profile_matches_float64_finite_differences(arch):
    pipe = tiny.build_pipeline(arch)
    profile = sencache.calibrate(pipe, num_samples=2, seeds=[3, 4], num_inference_steps=STEPS, progress=False,
                                 estimator="central", **kwargs(arch, pipe))
    ts = pipe.scheduler.timesteps.double().tolist()
    assert profile.timesteps.tolist() == pytest.approx(ts, rel=0, abs=1e-4)
    assert profile.metadata["transformer_class"] == type(pipe.transformer).__name__
    assert profile.metadata["num_samples"] == 2 and profile.jx_samples.shape == (2, STEPS)

    f64 = copy.deepcopy(pipe.transformer).double()
    batched = arch != "wan"
    for row, seed in enumerate((3, 4)):
        calls, finals = record_trajectory(pipe, arch, seed)
        if not batched:
            calls = calls[0::2]  # Wan: cond, uncond, cond, ... -> the cond calls

        def f(call, x=None, t=None):
            kw = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                  for k, v in call.items()}
            if x is not None:
                kw["hidden_states"] = x.double()
            if t is not None:
                kw["timestep"] = torch.full_like(call["timestep"], t)
            with torch.no_grad():
                out = f64(**kw)[0]
            return out[out.shape[0] // 2:] if batched else out  # conditional branch

        def cond(x):
            return x[x.shape[0] // 2:] if batched else x

        for k in range(STEPS):
            x_k = calls[k]["hidden_states"]
            x_next = calls[k + 1]["hidden_states"] if k + 1 < STEPS else (
                torch.cat([finals[-1]] * 2) if batched else finals[-1]).to(x_k.dtype)
            f_k = f(calls[k])
            jx = (f(calls[k], x=x_next) - f_k).norm() / (cond(x_next).double() - cond(x_k).double()).norm()
            k_o = k + 1 if k + 1 < STEPS else k - 1
            jt = (f(calls[k], t=ts[k_o]) - f_k).norm() / abs(ts[k_o] - ts[k])
            # float32 model against its float64 copy on the same inputs: relative differences of a few 1e-6 in
            # outputs become ~1e-5 in differences of outputs about 10x smaller; 1e-4 leaves margin.
            assert float(profile.jx_samples[row, k]) == pytest.approx(float(jx), rel=1e-4), (k, "jx")
            assert float(profile.jt_samples[row, k]) == pytest.approx(float(jt), rel=1e-4), (k, "jt")
    torch.testing.assert_close(profile.jx, profile.jx_samples.mean(0))


def test_calibrate_errors():
    pipe = tiny.build_pipeline("wan")
    with pytest.raises(ValueError, match="conditions"):
        sencache.calibrate(pipe, num_samples=1, num_inference_steps=3, progress=False)
    with pytest.raises(ValueError, match="seeds"):
        sencache.calibrate(pipe, num_samples=2, seeds=[1], num_inference_steps=3, progress=False,
                           **kwargs("wan", pipe))
    with pytest.raises(ValueError, match="sets"):
        sencache.calibrate(pipe, num_samples=1, num_inference_steps=3, progress=False, output_type="np",
                           **kwargs("wan", pipe))
    prof = sencache.calibrate(pipe, num_samples=1, num_inference_steps=3, progress=False, **kwargs("wan", pipe))
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=prof))
    with pytest.raises(ValueError, match="remove_sencache"):
        sencache.calibrate(pipe, num_samples=1, num_inference_steps=3, progress=False, **kwargs("wan", pipe))
    sencache.remove_sencache(pipe)
    # calibration leaves no hook behind: the pipeline output is unchanged
    a = pipe(**tiny.call_kwargs("wan", pipe, num_inference_steps=3)).frames
    b = tiny.build_pipeline("wan")
    assert torch.equal(a, b(**tiny.call_kwargs("wan", b, num_inference_steps=3)).frames)


@pytest.mark.parametrize("arch", ["cogvideox", "ltx"])
def test_calibration_without_guidance_uses_whole_batch(arch):
    """Batched-CFG pipelines at guidance_scale=1 send an undoubled batch: every sample is conditional."""
    pipe = tiny.build_pipeline(arch)
    kw = {**kwargs(arch, pipe), "guidance_scale": 1.0}
    prof = sencache.calibrate(pipe, num_samples=1, num_inference_steps=3, progress=False, **kw)
    assert prof.jx_samples.shape == (1, 3) and bool((prof.jx > 0).all()) and bool((prof.jt > 0).all())
