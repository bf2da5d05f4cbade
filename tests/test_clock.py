"""The step clock's per-call schedule table: a timestep that is a view of one entry of ``scheduler.timesteps`` takes
its row instead of a profile lookup, with exactly the lookup's values."""

import pytest
import torch

import sencache
from sencache.clock import _Schedule
from sencache.hooks import _hook
from sencache.offline_pipelines import ARCHITECTURES
from tests.helpers import run


def sloped_profile(pipe):
    ts = torch.linspace(1000, 0, 7)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.linspace(0.5, 3.0, 7), jt=torch.linspace(1e-3, 3e-2, 7),
                                       metadata={"transformer_class": type(pipe.transformer).__name__})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rows_of_the_schedule_decide_like_a_lookup(arch, pipes):
    """The same call with the timestep handed over as a view of the schedule (rows) and as a copy (lookup)."""
    pipe = pipes[arch]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=sloped_profile(pipe), eps=0.3, eps_start=0.05))
    hook = _hook(pipe.transformer)
    rows = []
    original_tick = hook.clock.tick

    def tick(module, name, x, t, *rest):
        schedule = hook.clock.schedule
        rows.append(schedule is not None and schedule.row(t, x) is not None)
        return original_tick(module, name, x, t, *rest)

    hook.clock.tick = tick
    via_rows = run(pipe, arch)
    stats_rows = sencache.get_stats(pipe)
    assert rows[1:] == [True] * (len(rows) - 1)  # every step after the first (which builds the table)

    rows.clear()
    copy = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: (a, {**kw, "timestep": kw["timestep"].clone()}), with_kwargs=True)
    try:
        via_lookup = run(pipe, arch)
    finally:
        copy.remove()
    stats_lookup = sencache.get_stats(pipe)
    assert not any(rows)
    assert 0 < stats_rows.skipped < stats_rows.num_steps
    assert torch.equal(via_rows, via_lookup)
    assert stats_rows.computed == stats_lookup.computed
    # step 0 is forced; its score is measured against the reference the previous call left, which differs here
    assert stats_rows.scores[1:] == stats_lookup.scores[1:]


def test_a_row_is_taken_only_for_a_view_of_one_entry():
    ts = torch.linspace(999.0, 0.0, 10)
    cfg = sencache.SenCacheConfig(profile=sencache.SensitivityProfile(torch.linspace(1000, 0, 5), torch.rand(5),
                                                                      torch.rand(5)))
    x = torch.randn(2, 3)
    schedule = _Schedule(ts, 2, cfg)
    t, jx, jt = schedule.row(ts[4].expand(2), x)
    want_jx, want_jt = cfg.profile.lookup(torch.full((2,), float(ts[4])))
    assert torch.equal(t, torch.full((2,), float(ts[4]))) and torch.equal(jx, want_jx) and torch.equal(jt, want_jt)
    assert schedule.row(ts[4:5], x) is not None and schedule.row(ts[4], x) is not None
    assert schedule.row(ts[4].clone().expand(2), x) is None  # same value, other memory
    assert schedule.row(ts[4:6], x) is None  # two entries
    assert schedule.row(ts[4].expand(3), x) is None  # another batch size: the lookup path raises there
    assert schedule.row(4.0, x) is None
    ts.mul_(0.5)  # an in-place change of the schedule invalidates its rows
    assert schedule.row(ts[4].expand(2), x) is None


def test_inference_tensors_are_looked_up(pipes):
    """Under torch.inference_mode the schedule has no version counter: no table, the same decisions."""
    pipe = pipes["wan"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=sloped_profile(pipe), eps=0.3, eps_start=0.05))
    want = run(pipe, "wan")
    stats = sencache.get_stats(pipe)
    with torch.inference_mode():
        got = run(pipe, "wan")
    assert torch.equal(got, want)
    assert sencache.get_stats(pipe).computed == stats.computed
