"""Threads: one SenCache transformer shared by pipelines that run in several threads at once keeps each thread's
steps, decisions and residuals apart; separate pipelines in separate threads keep working."""

import threading

import torch

import sencache
from sencache import offline_pipelines
from tests.helpers import STEPS

TIMEOUT = 300  # seconds a thread may take before the test fails instead of hanging


def profile(pipe):
    ts = torch.linspace(1000, 0, 6)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.linspace(0.4, 1.5, 6), jt=torch.linspace(2e-3, 2e-2, 6),
                                       metadata={"transformer_class": type(pipe.transformer).__name__})


def call(pipe, seed, barrier=None):
    """One pipeline call; with a barrier, every step waits for the other threads' same step (lockstep)."""
    kw = offline_pipelines.call_kwargs("wan", pipe, seed=seed, num_inference_steps=STEPS, output_type="latent")
    if barrier is not None:
        def wait(p, i, t, callback_kwargs):
            barrier.wait(timeout=TIMEOUT)
            return callback_kwargs
        kw["callback_on_step_end"] = wait
    return pipe(**kw).frames


def in_threads(jobs):
    """Run ``jobs`` (callables) in one thread each, in lockstep; their results, or the first error raised."""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def work(i):
        try:
            results[i] = jobs[i](barrier)
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(TIMEOUT)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def test_one_transformer_shared_by_pipelines_in_two_threads(pipes):
    pipe_a = pipes["wan"]
    pipe_b = type(pipe_a)(**{**pipe_a.components,
                             "scheduler": type(pipe_a.scheduler).from_config(pipe_a.scheduler.config)})
    assert pipe_b.transformer is pipe_a.transformer
    sencache.apply_sencache(pipe_a, sencache.SenCacheConfig(profile=profile(pipe_a), eps=0.3, eps_start=0.05))
    want, want_stats = [], []
    for pipe, seed in ((pipe_a, 1), (pipe_b, 2)):
        want.append(call(pipe, seed))
        want_stats.append(sencache.get_stats(pipe_a))
    assert not torch.equal(want[0], want[1])
    assert all(0 < s.skipped < STEPS for s in want_stats)  # the decisions and residuals matter

    def job(pipe, seed):
        def run(barrier):
            out = [call(pipe, seed, barrier) for _ in range(2)]
            return out, sencache.get_stats(pipe)  # this thread's latest call
        return run

    for (outs, stats), expected, expected_stats in zip(in_threads([job(pipe_a, 1), job(pipe_b, 2)]), want,
                                                       want_stats, strict=True):
        assert torch.equal(outs[0], expected) and torch.equal(outs[1], expected)
        # step 0 is forced; its score is measured against whatever reference the thread's previous call left
        assert stats.computed == expected_stats.computed and stats.scores[1:] == expected_stats.scores[1:]


def test_separate_pipelines_in_two_threads():
    built = [offline_pipelines.build_pipeline("wan", seed=s) for s in (0, 1)]
    for pipe in built:
        sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile(pipe), eps=0.3, eps_start=0.05))
    want = [call(pipe, 5) for pipe in built]
    got = in_threads([lambda barrier, p=pipe: call(p, 5, barrier) for pipe in built])
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
