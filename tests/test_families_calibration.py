"""``calibrate`` on every family beyond the first three (both of Wan 2.2's experts, Flux's timesteps in [0, 1])
against a direct float64 computation of the same finite differences."""

import copy

import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache import plumbing
from sencache.adapters import get_adapter
from tests.helpers import calibration_kwargs, trajectory

STEPS = 6


def kwargs(arch, pipe):
    return calibration_kwargs(arch, pipe, STEPS)


@pytest.mark.parametrize("arch", tiny.NEW_FAMILIES)
def test_calibrated_profile_matches_float64_finite_differences(arch):
    pipe = tiny.build_pipeline(arch)
    profile = sencache.calibrate(pipe, num_samples=1, seeds=[3], num_inference_steps=STEPS, progress=False,
                                 estimator="central", **kwargs(arch, pipe))
    scale = get_adapter(pipe.transformer).timestep_scale
    ts = (pipe.scheduler.timesteps.double() * scale).tolist()  # in the transformer's units
    assert profile.timesteps.double().tolist() == pytest.approx(ts, rel=1e-6, abs=1e-9)
    batched = get_adapter(pipe.transformer).batched_cfg
    f64 = {id(tr): copy.deepcopy(tr).double() for tr in plumbing.transformers(pipe)}
    calls, final, _ = trajectory(pipe, arch, 3, STEPS)
    experts = {id(m) for m, _ in calls}
    assert len(experts) == (2 if arch == "wan22" else 1)  # Wan 2.2: both experts took steps

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

    for k in range(STEPS):
        x_k = calls[k][1]["hidden_states"]
        x_next = calls[k + 1][1]["hidden_states"] if k + 1 < STEPS else (
            torch.cat([final] * 2) if batched else final).to(x_k.dtype)
        f_k = f(calls[k])
        jx = (f(calls[k], x=x_next) - f_k).norm() / (cond(x_next).double() - cond(x_k).double()).norm()
        k_o = k + 1 if k + 1 < STEPS else k - 1
        jt = (f(calls[k], t=ts[k_o]) - f_k).norm() / abs(ts[k_o] - ts[k])
        # float32 model against its float64 copy on the same inputs (as in tests/test_calibration.py)
        assert float(profile.jx_samples[0, k]) == pytest.approx(float(jx), rel=1e-4), (k, "jx")
        assert float(profile.jt_samples[0, k]) == pytest.approx(float(jt), rel=1e-4), (k, "jt")
