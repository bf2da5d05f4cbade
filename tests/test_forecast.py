"""SenCacheConfig(forecast="linear"): on a skipped step the block stack's output is its input plus the residual
extrapolated to first order in the step index from the last two computed steps of the call."""

import pytest
import torch

import sencache
from sencache.stack import LinearResidual
from tests.helpers import flat_profile, run


def test_linear_residual_extrapolates_from_the_last_two_computed_steps_of_the_call():
    r = LinearResidual()
    a, b, c = (torch.full((2, 3), v, dtype=torch.float64) for v in (1.0, 3.0, 4.0))
    r.push((a,), call=1, step=0)
    assert r.at(3)[0] is a  # one computed step: reused as it is
    r.push((b,), call=1, step=2)
    torch.testing.assert_close(r.at(3)[0], b + 0.5 * (b - a), rtol=0, atol=0)  # slope (b - a) / 2 per step
    torch.testing.assert_close(r.at(5)[0], b + 1.5 * (b - a), rtol=0, atol=0)
    r.push((c,), call=1, step=2)  # the same step computed again: replaced, the older step kept
    torch.testing.assert_close(r.at(4)[0], c + (c - a), rtol=0, atol=0)
    r.push((a,), call=2, step=0)  # a new pipeline call: nothing of the last one is extrapolated from
    assert r.previous is None and r.at(1)[0] is a and r.valid(2) and not r.valid(1)
    r.clear()
    assert r.tensors is None and r.previous is None and r.steps == (-1, -1)


def test_forecast_reaches_the_skipped_steps_of_a_pipeline(pipes):
    """The stack's output on every skipped step is its input plus the forecast from the residuals the same context
    computed, read off the block stack while a tiny Wan pipeline runs (CFG: two contexts, each with its own)."""
    pipe = pipes["wan"]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0,
                                                          forecast="linear"), mode="eager")
    hook = pipe.transformer._diffusers_hook.get_hook("sencache")
    stack = hook.stack
    computed, checked, extrapolated = {}, [], []  # (context, step) -> residual; skipped steps checked
    residual, skip = stack.residual, stack.skip

    def spy_residual(out, carried):
        r = residual(out, carried)
        computed[(len(computed) % 2, hook.lane.clock.step)] = r[0].clone()
        return r

    def spy_skip(carried, res):
        ctx, step = len(checked) % 2, hook.lane.clock.step
        steps = sorted(s for c, s in computed if c == ctx)
        if len(steps) == 1:  # one computed step so far: its residual as it is
            torch.testing.assert_close(res[0], computed[(ctx, steps[0])], rtol=0, atol=0)
        else:
            s0, s1 = steps[-2:]
            r0, r1 = computed[(ctx, s0)], computed[(ctx, s1)]
            torch.testing.assert_close(res[0], r1 + (step - s1) / (s1 - s0) * (r1 - r0), rtol=1e-6, atol=1e-6)
            extrapolated.append(step)
        checked.append(step)
        return skip(carried, res)

    stack.residual, stack.skip = spy_residual, spy_skip
    try:
        out = run(pipe, "wan", num_inference_steps=8)
    finally:
        del stack.residual, stack.skip
        sencache.remove_sencache(pipe)
    assert len(extrapolated) >= 4 and torch.isfinite(out).all()  # the flat profile at eps=10 skips K=3 in a row
    reuse_cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0)
    sencache.apply_sencache(pipe, reuse_cfg, mode="eager")
    try:
        reused = run(pipe, "wan", num_inference_steps=8)
    finally:
        sencache.remove_sencache(pipe)
    assert not torch.equal(out, reused)  # the forecast changed what the skipped steps add


def test_forecast_without_skips_is_the_paper_rule_bit_for_bit(pipes):
    pipe = pipes["wan"]
    outs = []
    for forecast in ("reuse", "linear"):
        cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=0.0, eps_start=0.0, forecast=forecast)
        sencache.apply_sencache(pipe, cfg, mode="eager")
        try:
            outs.append(run(pipe, "wan", num_inference_steps=4))
        finally:
            sencache.remove_sencache(pipe)
    assert torch.equal(*outs)


def test_forecast_is_checked_and_runs_eager_only(pipes):
    pipe = pipes["wan"]
    with pytest.raises(ValueError, match="forecast must be one of"):
        sencache.SenCacheConfig(profile=flat_profile(pipe), forecast="quadratic")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), forecast="linear")
    with pytest.raises(ValueError, match="eager mode only"):
        sencache.apply_sencache(pipe, cfg, mode="compiled")
    sencache.apply_sencache(pipe, cfg, mode="graph")
    try:
        with pytest.warns(RuntimeWarning, match="forecast='linear' runs in eager mode only"):
            run(pipe, "wan", num_inference_steps=2)
        assert sencache.get_stats(pipe) is not None
        assert pipe.transformer._diffusers_hook.get_hook("sencache").mode == "eager"
    finally:
        sencache.remove_sencache(pipe)
