"""mode="compiled": the decision, the torch.cond skip and the forward in one fullgraph torch.compile graph."""

import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache.hooks import _hook
from tests.helpers import flat_profile, requires_cuda, run

ARCHS = tiny.ARCHITECTURES
pytestmark = pytest.mark.slow  # torch.compile: seconds per test
AOT = {"backend": "aot_eager"}  # the graphs without code generation: outputs bitwise equal to eager


def eager_reference(pipe, arch, cfg):
    sencache.apply_sencache(pipe, cfg)
    out = run(pipe, arch)
    return out, sencache.get_stats(pipe)


def unique_graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("arch", ARCHS)
def test_compiled_equals_eager_and_never_breaks_the_graph(arch, pipes):
    pipe = pipes[arch]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0)
    want, want_stats = eager_reference(pipe, arch, cfg)
    assert want_stats.skipped > 0  # the run exercises both branches of the cond

    sencache.apply_sencache(pipe, cfg, mode="compiled", compile_options=AOT)
    got = run(pipe, arch)
    got_stats = sencache.get_stats(pipe)
    assert got_stats.computed == want_stats.computed and got_stats.forced == want_stats.forced
    assert got_stats.block_stack_calls == want_stats.block_stack_calls
    assert got_stats.scores == want_stats.scores
    assert torch.equal(got, want)

    # Residual buffers and the decision state persist across calls: an identical call reuses every graph, and a new
    # seed gives another video from the same graphs.
    graphs = unique_graphs()
    assert torch.equal(run(pipe, arch), want)
    assert sencache.get_stats(pipe).computed == want_stats.computed
    assert not torch.equal(run(pipe, arch, seed=7), want)
    assert unique_graphs() == graphs

    # torch._dynamo.explain of every variant the step takes (deciding or following context; first step of a call:
    # plain stack, later: torch.cond), each on a copy of the decision state. explain resets dynamo, so it runs last.
    hook = _hook(pipe.transformer)
    executor = hook.chain[0]
    compiled_step = executor.compiled_step
    explained = {}

    def explain_then_run(decide_inputs, args, kwargs):
        variant = (decide_inputs is not None, executor.must_compute)
        if variant not in explained:
            state = hook.clock.state
            saved = {k: v.clone() for k, v in state.state_dict().items()}
            explained[variant] = torch._dynamo.explain(executor.device_step)(decide_inputs, args, kwargs)
            state.load_state_dict(saved)
            executor.pending = None
        return compiled_step(hook.clock.signature)(decide_inputs, args, kwargs)

    executor.compiled_step = lambda signature: explain_then_run
    run(pipe, arch)
    assert {(True, True), (True, False)} <= set(explained)
    for variant, explanation in explained.items():
        assert explanation.graph_break_count == 0, (variant, explanation.break_reasons)
        assert explanation.graph_count == 1, variant


def test_compiled_eps_zero_is_uncached(pipes):
    pipe = pipes["wan"]
    want = run(pipe, "wan")
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=flat_profile(pipe, jx=1.0), eps=0.0, eps_start=0.0),
                            mode="compiled", compile_options=AOT)
    assert torch.equal(run(pipe, "wan"), want)
    assert sencache.get_stats(pipe).nfe == 10


def test_compiled_with_inductor_takes_the_eager_decisions(pipes):
    """The default backend (inductor) generates its own kernels: same decisions, outputs to float32 rounding. On
    LTX-Video (batched CFG: one deciding context, half of Wan's compiled variants; each inductor compile costs tens of
    seconds on the CI's CPU); the split contexts are the aot_eager tests' above."""
    pipe = pipes["ltx"]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0)
    want, want_stats = eager_reference(pipe, "ltx", cfg)
    assert 0 < want_stats.skipped < want_stats.num_steps  # both branches of the cond run
    sencache.apply_sencache(pipe, cfg, mode="compiled")
    got = run(pipe, "ltx")
    assert sencache.get_stats(pipe).computed == want_stats.computed
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_mode_and_options(pipes):
    pipe = pipes["wan"]
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe))
    with pytest.raises(ValueError, match="mode must be one of"):
        sencache.apply_sencache(pipe, cfg, mode="fast")
    with pytest.raises(ValueError, match="compile_options only apply"):
        sencache.apply_sencache(pipe, cfg, compile_options=AOT)


@requires_cuda
def test_reduce_overhead_outputs_survive_the_next_call():
    """CUDA-graph trees: Wan's CFG reads the cond output after the uncond call, whose replay reuses the trees' memory
    (seen on an H100: "accessing tensor output of CUDAGraphs that has been overwritten"); the hook copies outputs out.

    Inductor runs the skip's ``torch.cond`` with a host read of its predicate and leaves that graph out of the trees
    (``lowering.cond``: "control flow operator: torch.cond"), so only the calls that compute regardless (each
    context's first of a pipeline call) replay from the trees; the results must still equal eager mode."""
    pipe = tiny.build_pipeline("wan").to("cuda")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), eps=10.0, eps_start=10.0)
    want, want_stats = eager_reference(pipe, "wan", cfg)
    assert 0 < want_stats.nfe < want_stats.num_steps  # steps are skipped: both graphs run
    sencache.remove_sencache(pipe)
    sencache.apply_sencache(pipe, cfg, mode="compiled", compile_options={"mode": "reduce-overhead"})
    run(pipe, "wan")
    for _ in range(2):  # trees record on a later call than the first, then replay
        got = run(pipe, "wan")
        assert sencache.get_stats(pipe).computed == want_stats.computed
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
