import pytest
import torch

import sencache


@pytest.fixture
def profile():
    return sencache.SensitivityProfile(timesteps=torch.tensor([1000.0, 0.0]), jx=torch.ones(2), jt=torch.ones(2))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=-0.1), "eps must be"),
        (dict(eps_start=-1e-3), "eps_start must be"),
        (dict(eps=float("nan")), "eps must be"),
        (dict(max_consecutive_skips=-1), "max_consecutive_skips"),
        (dict(max_consecutive_skips=1.5), "max_consecutive_skips"),
        (dict(start_fraction=1.5), "start_fraction"),
        (dict(start_fraction=-0.1), "start_fraction"),
        (dict(force_last_steps=-2), "force_last_steps"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(interpolation="cubic"), "interpolation"),
    ],
)
def test_bad_values_raise(profile, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sencache.SenCacheConfig(profile=profile, **kwargs)


def test_profile_is_required():
    with pytest.raises(ValueError, match="calibrate"):
        sencache.SenCacheConfig()


def test_tolerance_schedule(profile):
    cfg = sencache.SenCacheConfig(profile=profile, eps=0.1, eps_start=0.01, start_fraction=0.2)
    assert [cfg.tolerance(i, 10) for i in range(4)] == [0.01, 0.01, 0.1, 0.1]
    edge = sencache.SenCacheConfig(profile=profile, eps=0.1, eps_start=0.01, start_fraction=0.0)
    assert edge.tolerance(0, 10) == 0.1
