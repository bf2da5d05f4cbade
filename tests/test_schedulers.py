"""Steps and timesteps come from the call in flight: a scheduler replaced after ``apply_sencache``, the transformer
reused in another pipeline, an aborted call, and the profile's scheduler check against the scheduler in use."""

import pytest
import torch
from diffusers import CogVideoXDPMScheduler

import sencache
from sencache import offline_pipelines
from tests.helpers import STEPS, run

ARCHS = ("cogvideox", "ltx")  # the pipelines that pass no step marker in their cache context


def profile(pipe, scheduler_class=None):
    ts = torch.linspace(1000, 0, 6)
    meta = {"transformer_class": type(pipe.transformer).__name__}
    if scheduler_class is not None:
        meta["scheduler_class"] = scheduler_class
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.linspace(0.4, 1.5, 6), jt=torch.linspace(2e-3, 2e-2, 6),
                                       metadata=meta)


def fresh_scheduler(pipe):
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


def reference(pipe, arch):
    """The output and decisions of a call on the pipeline as built."""
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe), eps=0.3, eps_start=0.05))
    out = run(pipe, arch)
    stats = sencache.get_stats(pipe)
    assert stats.num_steps == STEPS and 0 < stats.skipped < STEPS - 2
    return out, stats


@pytest.mark.parametrize("arch", ARCHS)
def test_a_replaced_scheduler_is_the_one_used(arch, pipes):
    pipe = pipes[arch]
    want, want_stats = reference(pipe, arch)
    original = pipe.scheduler
    original.set_timesteps(3 * STEPS)  # what the old scheduler holds must not matter
    pipe.scheduler = fresh_scheduler(pipe)
    try:
        got = run(pipe, arch)
    finally:
        pipe.scheduler = original
    stats = sencache.get_stats(pipe)
    assert torch.equal(got, want)
    assert stats.num_steps == STEPS and stats.computed == want_stats.computed
    assert stats.computed[-1]  # the forced last step is where this call ends


@pytest.mark.parametrize("arch", ARCHS)
def test_the_transformer_reused_in_another_pipeline(arch, pipes):
    pipe = pipes[arch]
    want, want_stats = reference(pipe, arch)
    other = type(pipe)(**{**pipe.components, "scheduler": fresh_scheduler(pipe)})
    pipe.scheduler.set_timesteps(3 * STEPS)  # what the scheduler of the pipeline SenCache was applied to holds
    got = run(other, arch)
    stats = sencache.get_stats(pipe)
    assert torch.equal(got, want)
    assert stats.num_steps == STEPS and stats.computed == want_stats.computed


@pytest.mark.parametrize("arch", ARCHS)
def test_an_aborted_call_does_not_leak_into_the_next(arch, pipes):
    pipe = pipes[arch]
    want, want_stats = reference(pipe, arch)

    def abort(p, i, t, callback_kwargs):
        if i == 4:
            raise KeyboardInterrupt
        return callback_kwargs

    for scheduler in (pipe.scheduler, fresh_scheduler(pipe)):  # the same scheduler, and a replaced one
        original, pipe.scheduler = pipe.scheduler, scheduler
        try:
            with pytest.raises(KeyboardInterrupt):
                run(pipe, arch, callback_on_step_end=abort)
            got = run(pipe, arch)
        finally:
            pipe.scheduler = original
        stats = sencache.get_stats(pipe)
        assert torch.equal(got, want)
        assert stats.num_steps == STEPS and stats.computed == want_stats.computed


def test_the_scheduler_check_runs_against_the_scheduler_in_use(pipes):
    pipe = pipes["cogvideox"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe, type(pipe.scheduler).__name__)))
    original = pipe.scheduler
    pipe.scheduler = CogVideoXDPMScheduler.from_config(original.config)
    try:
        with pytest.raises(ValueError, match="CogVideoXDDIMScheduler.*CogVideoXDPMScheduler"):
            run(pipe, "cogvideox")
        other = offline_pipelines.build_pipeline("cogvideox")
        other.transformer = pipe.transformer  # the SenCache transformer in a pipeline with the other scheduler
        other.scheduler = pipe.scheduler
        with pytest.raises(ValueError, match="CogVideoXDDIMScheduler.*CogVideoXDPMScheduler"):
            run(other, "cogvideox")
    finally:
        pipe.scheduler = original
    run(pipe, "cogvideox")  # the matching scheduler again
    assert sencache.get_stats(pipe).num_steps == STEPS
