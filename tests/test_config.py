import pytest
import torch

import sencache
from tests.helpers import flat_profile, run


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


def test_config_is_frozen_after_construction(profile):
    """A config applied to a pipeline cannot change behind apply_sencache's checks (issue 15, item 6): setting a
    field raises and says how to change it; a typo'd field name is named as such; replace() validates."""
    import dataclasses

    cfg = sencache.SenCacheConfig(profile=profile, eps=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"cannot set eps = -1.*dataclasses.replace"):
        cfg.eps = -1
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot set max_consecutive_skips"):
        cfg.max_consecutive_skips = 2
    with pytest.raises(AttributeError, match="no field 'epsilon'"):
        cfg.epsilon = 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        del cfg.eps
    assert cfg.eps == 0.1 and cfg.max_consecutive_skips == 3 and not hasattr(cfg, "epsilon")
    with pytest.raises(ValueError, match="eps must be"):
        dataclasses.replace(cfg, eps=-1)
    changed = dataclasses.replace(cfg, eps=0.2)
    assert changed.eps == 0.2 and changed.profile is profile and cfg.eps == 0.1


def test_config_frozen_while_applied(pipes):
    """The same after apply_sencache on a real pipeline: the change is refused and the running hook's decisions are
    those of the config as applied (eps=0 computes every step)."""
    import dataclasses


    pipe = pipes["wan"]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=0.0, eps_start=0.0)
    sencache.apply_sencache(pipe, cfg)
    with pytest.raises(dataclasses.FrozenInstanceError, match="apply_sencache"):
        cfg.eps = -1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eps = 1e6  # would skip every step it may
    run(pipe, "wan")
    stats = sencache.get_stats(pipe)
    assert stats.skipped == 0 and stats.nfe == stats.num_steps and cfg.eps == 0.0
