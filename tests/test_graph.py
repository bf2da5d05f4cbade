"""mode="graph" (each transformer call replays one CUDA graph, the block stack under a conditional IF node) and
mode="auto": the capture_if op, decisions and outputs against eager, eps=0 against an uncached graph replay, zero
host syncs, and the fallbacks. Without CUDA only the fallbacks and the argument checks run; the rest skips."""

import logging
import warnings

import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache_kernels import has_conditional_nodes
from tests.helpers import flat_profile, run

requires_graph = pytest.mark.skipif(not (torch.cuda.is_available() and has_conditional_nodes()),
                                    reason="needs a CUDA GPU and the extension built with CUDA")
SKIPPY = {"eps": 10.0, "eps_start": 10.0}  # skips as often as K allows: both branches of the IF node run


@pytest.fixture
def wan_cpu(pipes):
    return pipes["wan"]


def eager_run(pipe, arch, cfg, **kw):
    sencache.apply_sencache(pipe, cfg)
    return run(pipe, arch, **kw), sencache.get_stats(pipe)


# ----------------------------------------------------------------------------------------------------- CPU ---------


def test_graph_mode_without_cuda_warns_once_and_runs_eager(wan_cpu):
    cfg = sencache.SenCacheConfig(profile=flat_profile(wan_cpu), **SKIPPY)
    want, want_stats = eager_run(wan_cpu, "wan", cfg)
    assert want_stats.skipped > 0

    sencache.apply_sencache(wan_cpu, cfg, mode="graph")
    with pytest.warns(RuntimeWarning, match=r"latent is on cpu.*running in eager mode instead"):
        got = run(wan_cpu, "wan")
    assert torch.equal(got, want)
    assert sencache.get_stats(wan_cpu).computed == want_stats.computed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per application, not one per call
        assert torch.equal(run(wan_cpu, "wan"), want)


def test_auto_mode_on_cpu_logs_why_and_runs_eager(wan_cpu, caplog):
    cfg = sencache.SenCacheConfig(profile=flat_profile(wan_cpu), **SKIPPY)
    want, _ = eager_run(wan_cpu, "wan", cfg)
    sencache.apply_sencache(wan_cpu, cfg, mode="auto")
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="sencache"):
        warnings.simplefilter("error")  # auto explains itself in the log, never with a warning
        got = run(wan_cpu, "wan")
    assert torch.equal(got, want)
    assert any("running in eager mode" in r.getMessage() and "cpu" in r.getMessage() for r in caplog.records)


def test_modes_are_validated(wan_cpu):
    cfg = sencache.SenCacheConfig(profile=flat_profile(wan_cpu))
    with pytest.raises(ValueError, match="mode must be one of"):
        sencache.apply_sencache(wan_cpu, cfg, mode="graphs")
    with pytest.raises(ValueError, match="compile_options only apply"):
        sencache.apply_sencache(wan_cpu, cfg, mode="graph", compile_options={"backend": "aot_eager"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_graph_support_is_reported_absent_without_cuda():
    from sencache.modes.graph import unavailable_reason

    assert "CUDA" in unavailable_reason(torch.zeros(1))


@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
def test_graph_mode_logic_equals_eager_with_replaying_stand_ins(arch, pipes, replaying):
    pipe = pipes[arch]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    try:
        want, want_stats = eager_run(pipe, arch, cfg)
        want_other = run(pipe, arch, seed=5)
        assert want_stats.skipped > 0
        sencache.apply_sencache(pipe, cfg, mode="graph")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback
            got = run(pipe, arch)
            stats = sencache.get_stats(pipe)
            again = run(pipe, arch)
            other = run(pipe, arch, seed=5)
        assert stats.computed == want_stats.computed and stats.forced == want_stats.forced
        assert stats.block_stack_calls == want_stats.block_stack_calls
        assert stats.scores == want_stats.scores
        assert torch.equal(got, want) and torch.equal(again, want) and torch.equal(other, want_other)
        # one main graph and one body per CFG context, captured on the first call and replayed since
        contexts = 2 if arch == "wan" else 1
        assert len(replaying) == 2 * contexts
    finally:
        sencache.remove_sencache(pipe)


def test_graph_mode_captures_each_resolution_once_and_keeps_it(pipes, replaying):
    pipe = pipes["wan"]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    sizes = ({}, {"height": 48, "width": 32})
    try:
        want = [eager_run(pipe, "wan", cfg, **size)[0] for size in sizes]
        sencache.apply_sencache(pipe, cfg, mode="graph")
        for _ in range(2):  # alternate: both signatures keep their graphs and decision states
            for size, expected in zip(sizes, want, strict=True):
                assert torch.equal(run(pipe, "wan", **size), expected)
        assert len(replaying) == 2 * 2 * len(sizes)  # (main graph + body) x (cond, uncond) x resolutions
    finally:
        sencache.remove_sencache(pipe)


# ----------------------------------------------------------------------------------------------------- GPU ---------


@pytest.fixture(scope="module")
def gpu_session_pipes():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return {(arch, dtype): tiny.build_pipeline(arch, dtype=dtype).to("cuda")
            for arch in tiny.ARCHITECTURES for dtype in (torch.float32, torch.bfloat16)}


@pytest.fixture
def gpu_pipes(gpu_session_pipes):
    """The module's GPU pipelines, with SenCache removed after each test (also on failure or interrupt)."""
    yield gpu_session_pipes
    for pipe in gpu_session_pipes.values():
        sencache.remove_sencache(pipe)


TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@requires_graph
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("arch", tiny.ARCHITECTURES)
def test_graph_mode_takes_eager_decisions_and_gives_its_video(arch, dtype, gpu_pipes):
    pipe = gpu_pipes[(arch, dtype)]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    want, want_stats = eager_run(pipe, arch, cfg)
    assert want_stats.skipped > 0
    sencache.apply_sencache(pipe, cfg, mode="graph")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        for seed in (0, 0, 3):  # the first call captures; later calls replay, with new inputs too
            got = run(pipe, arch, seed=seed)
            stats = sencache.get_stats(pipe)
            if seed == 0:
                assert stats.computed == want_stats.computed
                assert stats.block_stack_calls == want_stats.block_stack_calls
                torch.testing.assert_close(got, want, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    sencache.apply_sencache(pipe, cfg)
    torch.testing.assert_close(got, run(pipe, arch, seed=3), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])


def _inputs(pipe, seed):
    """Latent and the two prompt embeddings of a tiny Wan call, on the GPU (made before any sync check)."""
    tr = pipe.transformer
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, 3, 16, 16, generator=g).to("cuda", tr.dtype)
    return latents, *(torch.randn(1, 16, tr.config.text_dim, generator=g).to("cuda", tr.dtype) for _ in range(2))


def _denoise(pipe, inputs, steps=8, guidance=5.0):
    """Wan's denoising loop by hand, with no host sync of its own: CFG as two calls, Euler steps. The caller sets
    the scheduler's timesteps (``pipe.scheduler.set_timesteps(steps, device="cuda")``)."""
    tr, sched = pipe.transformer, pipe.scheduler
    latents, enc, neg = inputs
    sigmas, timesteps = sched.host_sigmas, sched.timesteps
    for i in range(steps):
        t = timesteps[i].expand(1)
        with tr.cache_context("cond"):
            cond = tr(hidden_states=latents, timestep=t, encoder_hidden_states=enc, return_dict=False)[0]
        with tr.cache_context("uncond"):
            uncond = tr(hidden_states=latents, timestep=t, encoder_hidden_states=neg, return_dict=False)[0]
        latents = latents + (sigmas[i + 1] - sigmas[i]) * (uncond + guidance * (cond - uncond))
    return latents


def _set_steps(pipe, steps=8):
    pipe.scheduler.set_timesteps(steps, device="cuda")
    pipe.scheduler.host_sigmas = [float(s) for s in pipe.scheduler.sigmas]  # read on the host before the loop


@requires_graph
def test_eps0_equals_an_uncached_graph_replay(gpu_pipes):
    pipe = gpu_pipes[("wan", torch.float32)]
    tr = pipe.transformer
    # The uncached reference: the plain transformer call captured once and replayed for both contexts.
    g = torch.Generator().manual_seed(0)
    static = {"hidden_states": torch.randn(1, 16, 3, 16, 16, generator=g).to("cuda"),
              "timestep": torch.full((1,), 500.0, device="cuda"),
              "encoder_hidden_states": torch.randn(1, 16, tr.config.text_dim, generator=g).to("cuda")}
    tr(**static, return_dict=False)  # warm-up
    plain = torch.cuda.CUDAGraph()
    with torch.cuda.graph(plain):
        static_out = tr(**static, return_dict=False)[0]

    class Replayed(torch.nn.Module):
        config = tr.config
        dtype = tr.dtype

        def cache_context(self, name):
            return tr.cache_context(name)

        def forward(self, return_dict=False, **kw):
            for k, v in kw.items():
                static[k].copy_(v)
            plain.replay()
            return (static_out.clone(),)

    class Pipe:
        transformer, scheduler = Replayed(), pipe.scheduler

    _set_steps(pipe)
    inputs = _inputs(pipe, seed=0)
    want = _denoise(Pipe, inputs)
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), eps=0.0, eps_start=0.0),
                            mode="graph")
    _denoise(pipe, inputs)  # captures
    got = _denoise(pipe, inputs)
    assert sencache.get_stats(pipe).skipped == 0
    assert torch.equal(got, want)


@requires_graph
def test_the_denoising_loop_has_no_host_sync_after_capture(gpu_pipes):
    pipe = gpu_pipes[("wan", torch.bfloat16)]
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY), mode="graph")
    _set_steps(pipe)
    inputs = _inputs(pipe, seed=1)
    want = _denoise(pipe, inputs)  # captures
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _denoise(pipe, inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sencache.get_stats(pipe).skipped > 0
    assert torch.equal(got, want)


@requires_graph
def test_a_capture_failure_falls_back_to_eager_with_one_warning(gpu_pipes):
    pipe = gpu_pipes[("wan", torch.float32)]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    # A host read inside the block stack cannot be captured; eager mode does not mind it.
    def host_read(module, args):
        float(args[0].sum())

    syncing = pipe.transformer.blocks[0].register_forward_pre_hook(host_read)
    try:
        want, want_stats = eager_run(pipe, "wan", cfg)
        sencache.apply_sencache(pipe, cfg, mode="graph")
        with pytest.warns(RuntimeWarning, match=r"(?s)capturing the step failed.*running in eager mode instead"):
            got = run(pipe, "wan")
        assert torch.equal(got, want)
        assert sencache.get_stats(pipe).computed == want_stats.computed
    finally:
        syncing.remove()
