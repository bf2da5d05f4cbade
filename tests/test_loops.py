"""Integrators' own loops: the transformer called directly, twice per step for guidance, with or without diffusers'
``cache_context`` and its step marker. SenCache never returns one call's prediction for another."""

import pytest
import torch

import sencache
from tests.helpers import flat_profile

STEPS = 10
GUIDANCE = 4.0
# How the loop tells SenCache where it is: nothing; a context per guidance branch; those contexts with diffusers'
# step marker; both branches inside one context.
WAYS = ("none", "named", "marked", "one_context")


def sloped(pipe):
    """A profile under which the loop skips some steps (and computes others)."""
    ts = torch.linspace(1000, 0, 6)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.linspace(0.4, 1.5, 6), jt=torch.linspace(2e-3, 2e-2, 6),
                                       metadata={"transformer_class": type(pipe.transformer).__name__})


def inputs(tr, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, tr.config.in_channels, 1, 4, 4, generator=g)
    e1, e2 = (torch.randn(1, 4, tr.config.text_dim, generator=g) for _ in range(2))
    return x, e1, e2


def guided_loop(tr, way, timestep_as, seed=0, record=None):
    """A classifier-free-guided Euler loop over ``STEPS`` steps; returns the final latent."""
    x, e1, e2 = inputs(tr, seed)
    schedule = torch.linspace(999.0, 50.0, STEPS)
    sigmas = torch.cat([schedule / 1000, torch.zeros(1)])

    def call(i, name, e):
        t = schedule[i].expand(1) if timestep_as == "view" else torch.full((1,), float(schedule[i]))
        if way == "none" or way == "one_context":
            return tr(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]
        marker = {"step_index": i, "num_inference_steps": STEPS} if way == "marked" else {}
        with tr.cache_context(name, **marker):
            return tr(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0]

    with torch.no_grad():
        for i in range(STEPS):
            if way == "one_context":
                with tr.cache_context("cond"):
                    cond, uncond = call(i, "cond", e1), call(i, "uncond", e2)
            else:
                cond, uncond = call(i, "cond", e1), call(i, "uncond", e2)
            if record is not None:
                record.append((cond, uncond))
            x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + GUIDANCE * (cond - uncond))
    return x


@pytest.mark.parametrize("timestep_as", ["view", "copy"])
@pytest.mark.parametrize("way", WAYS)
def test_eps_zero_loop_equals_uncached(way, timestep_as, pipes):
    tr = pipes["wan"].transformer
    want = guided_loop(tr, way, timestep_as)
    sencache.apply_sencache(tr, sencache.SenCacheConfig(profile=flat_profile(pipes["wan"], jx=1.0), eps=0.0,
                                                        eps_start=0.0, num_inference_steps=STEPS))
    got = guided_loop(tr, way, timestep_as)
    assert torch.equal(got, want)
    stats = sencache.get_stats(tr)
    assert stats.num_steps == STEPS and stats.nfe == STEPS and stats.block_stack_calls == 2 * STEPS


@pytest.mark.parametrize("timestep_as", ["view", "copy"])
def test_each_branch_keeps_its_residual(timestep_as, pipes):
    """With skips, every way of calling gives the loop of explicit contexts with step markers, bit for bit; on a
    skipped step the two branches still differ (each took its own residual)."""
    pipe = pipes["wan"]
    tr = pipe.transformer
    sencache.apply_sencache(tr, sencache.SenCacheConfig(profile=sloped(pipe), eps=0.3, eps_start=0.05,
                                                        num_inference_steps=STEPS))
    runs, stats = {}, {}
    for way in WAYS:
        record = []
        runs[way] = guided_loop(tr, way, timestep_as, record=record)
        stats[way] = sencache.get_stats(tr)
        skipped = [i for i, c in enumerate(stats[way].computed) if not c]
        assert skipped and len(skipped) < STEPS - 2, stats[way].computed
        for i in skipped:
            cond, uncond = record[i]
            assert not torch.equal(cond, uncond)
        assert stats[way].block_stack_calls == 2 * stats[way].nfe
    for way in WAYS:
        assert torch.equal(runs[way], runs["marked"]), way
        assert stats[way].computed == stats["marked"].computed, way
    sencache.remove_sencache(tr)
    assert not torch.equal(guided_loop(tr, "none", timestep_as), runs["none"])  # the skips changed the result


def test_a_second_call_at_the_same_step_gets_its_own_prediction(pipes):
    """The issue's repro: the same latent and timestep with two prompts, outside any cache context."""
    tr = pipes["wan"].transformer
    x, e1, e2 = inputs(tr)
    t = torch.full((1,), 700.0)
    with torch.no_grad():
        want = [tr(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0] for e in (e1, e2)]
        sencache.apply_sencache(tr, sencache.SenCacheConfig(profile=sloped(pipes["wan"]), eps=10.0, eps_start=10.0,
                                                            force_first_steps=1, num_inference_steps=STEPS))
        for _ in range(2):  # step 0 (computed), then step 1 at the same latent and timestep
            got = [tr(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)[0] for e in (e1, e2)]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert sencache.get_stats(tr).num_steps == STEPS and len(sencache.get_stats(tr).computed) == 1


def test_transformer_of_a_pipeline_called_directly_needs_the_step_count(pipes):
    """Applied to a pipeline, then called outside the pipeline's call: the pipeline's scheduler (left from its last
    call) does not describe this loop, so SenCache asks for the step count instead of guessing."""
    pipe = pipes["wan"]
    tr = pipe.transformer
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=sloped(pipe), eps=0.3, eps_start=0.05))
    x, e1, _ = inputs(tr)
    with torch.no_grad(), pytest.raises(ValueError, match="number of denoising steps.*cache_context"):
        tr(hidden_states=x, timestep=torch.full((1,), 700.0), encoder_hidden_states=e1)
    assert torch.equal(guided_loop(tr, "marked", "copy"), guided_loop(tr, "marked", "copy"))
    assert sencache.get_stats(tr).num_steps == STEPS
