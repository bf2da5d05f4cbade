"""SenCache over blocks compiled by region (diffusers' ``compile_repeated_blocks``), before or after
``apply_sencache``: eager mode and graph mode's logic (the CPU stand-ins of conftest) run the blocks' compiled code and
give eager SenCache's output and timeline without a graph break or a recompilation after the first call; compiled mode
compiles the whole step over them; graph mode keeps inductor's own CUDA graphs off inside its capture and refuses
blocks compiled with them, saying why. Dynamo's ``eager`` backend runs the captured graphs without code generation:
outputs are bitwise eager's."""

import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import sencache
from sencache import offline_pipelines as tiny
from sencache.hooks import _hook
from sencache.modes.graph import inductor_cudagraphs
from sencache_kernels import has_conditional_nodes
from tests.helpers import flat_profile, run

AOT = {"fullgraph": True, "backend": "eager"}
SKIPPY = {"eps": 10.0, "eps_start": 10.0}  # skips as often as K allows: both the compute and the skip path run
STEPS = 6  # F...C.: computed and skipped steps


def go(pipe):
    return run(pipe, "wan", num_inference_steps=STEPS)


def _uncompile(transformer):
    sencache.remove_sencache(transformer)
    for block in transformer.blocks:
        block._compiled_call_impl = None


@pytest.fixture(scope="module")
def wan():
    """A tiny Wan pipeline of this module's own (compiling changes it), and eager SenCache's output and statistics
    on it before any compilation."""
    pipe = tiny.build_pipeline("wan")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    sencache.apply_sencache(pipe, cfg)
    want, stats = go(pipe), sencache.get_stats(pipe)
    assert stats.skipped > 0
    sencache.remove_sencache(pipe)
    yield pipe, cfg, want, stats
    _uncompile(pipe.transformer)


@pytest.fixture
def compiled_wan(wan):
    """The module's pipeline with its blocks compiled by region (dynamo's cache makes every compilation after the
    first cheap), undone after the test."""
    pipe = wan[0]
    pipe.transformer.compile_repeated_blocks(**AOT)
    counters.clear()
    yield wan
    _uncompile(pipe.transformer)


def _graphs():
    return counters["stats"]["unique_graphs"]


def test_eager_over_compiled_blocks_gives_eager_output_and_timeline(compiled_wan):
    pipe, cfg, want, want_stats = compiled_wan
    impls = [block._compiled_call_impl for block in pipe.transformer.blocks]
    sencache.apply_sencache(pipe, cfg)
    got = go(pipe)
    assert torch.equal(got, want) and sencache.get_stats(pipe).computed == want_stats.computed
    stack = _hook(pipe.transformer).stack
    assert stack.compiled == impls  # the stack runs the compiled code; the blocks' own calls stay eager
    assert all(block._compiled_call_impl is None for block in pipe.transformer.blocks)
    assert not counters["graph_break"]
    graphs = _graphs()
    assert graphs >= 1  # compiled during the first call only: the second reuses every graph
    assert torch.equal(go(pipe), want)
    assert _graphs() == graphs and not counters["graph_break"]
    sencache.remove_sencache(pipe)  # the blocks get their compiled calls back
    assert [block._compiled_call_impl for block in pipe.transformer.blocks] == impls


def test_compiling_after_apply_or_after_a_call_is_taken_up(wan):
    pipe, cfg, want, want_stats = wan
    try:
        sencache.apply_sencache(pipe, cfg)
        pipe.transformer.compile_repeated_blocks(**AOT)
        assert torch.equal(go(pipe), want)
        stack = _hook(pipe.transformer).stack
        assert all(fn is not None for fn in stack.compiled) and stack.generation == 1

        _uncompile(pipe.transformer)
        sencache.apply_sencache(pipe, cfg)
        assert torch.equal(go(pipe), want)  # uncompiled
        pipe.transformer.compile_repeated_blocks(**AOT)
        assert torch.equal(go(pipe), want)
        assert sencache.get_stats(pipe).computed == want_stats.computed
        assert all(fn is not None for fn in _hook(pipe.transformer).stack.compiled)
    finally:
        _uncompile(pipe.transformer)


def _spy(stack, log):
    """Wrap the stack's compiled block calls: each call logs inductor's CUDA-graph setting at that moment."""
    from torch._inductor import config

    def spying(fn):
        def call(*args, **kwargs):
            log.append(config.triton.cudagraphs)
            return fn(*args, **kwargs)
        return call

    stack.calls = [spying(fn) for fn in stack.calls]


def test_graph_mode_captures_the_compiled_blocks_with_inductor_cudagraphs_off(compiled_wan, replaying):
    from torch._inductor import config

    pipe, cfg, want, want_stats = compiled_wan
    sencache.apply_sencache(pipe, cfg, mode="graph")
    stack = _hook(pipe.transformer).stack
    stack.adopt_compiled()
    log = []
    _spy(stack, log)
    with warnings.catch_warnings(), config.patch({"triton.cudagraphs": True}):  # a user's global setting
        warnings.simplefilter("error")  # no fallback
        got = go(pipe)
        assert config.triton.cudagraphs  # restored after the captures
    assert torch.equal(got, want)
    stats = sencache.get_stats(pipe)
    assert stats.computed == want_stats.computed and stats.block_stack_calls == want_stats.block_stack_calls
    # cond and uncond each: warm-up and body capture with inductor's CUDA graphs off; then a body replay per computed
    # step (the stand-in runs the Python again, outside any capture: the user's setting holds), each running every block
    blocks = len(pipe.transformer.blocks)
    assert len(replaying) == 4
    assert log.count(False) == 2 * 2 * blocks and log.count(True) == want_stats.block_stack_calls * blocks
    assert not counters["graph_break"]


def test_graph_mode_refuses_blocks_compiled_with_inductor_cudagraphs(wan, replaying):
    pipe, cfg, want, _ = wan
    try:
        pipe.transformer.compile_repeated_blocks(fullgraph=True, mode="reduce-overhead")
        sencache.apply_sencache(pipe, cfg, mode="graph")
        with torch.compiler.set_stance("force_eager"), pytest.warns(
                RuntimeWarning, match=r"compiled with inductor's CUDA graphs.*running in eager mode instead"):
            got = go(pipe)  # the stance runs the blocks uncompiled: inductor would take a while on a CPU
        assert torch.equal(got, want) and _hook(pipe.transformer).mode == "eager" and not replaying
    finally:
        _uncompile(pipe.transformer)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, False), ({"backend": "aot_eager"}, False), ({"mode": "max-autotune-no-cudagraphs"}, False),
    ({"mode": "reduce-overhead"}, True), ({"mode": "max-autotune"}, True),
    ({"options": {"triton.cudagraphs": True}}, True),
])
def test_inductor_cudagraphs_is_read_from_the_compile_options(kwargs, expected):
    assert inductor_cudagraphs(torch.compile(torch.nn.Linear(2, 2).forward, **kwargs)) is expected
    assert inductor_cudagraphs(torch.nn.Linear(2, 2).forward) is False


@pytest.mark.slow  # compiles the whole step (about 10 s on 2 cores; LTX-Video: batched CFG, half of Wan's variants)
def test_compiled_mode_over_compiled_blocks_equals_eager():
    pipe = tiny.build_pipeline("ltx")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    sencache.apply_sencache(pipe, cfg)
    want, want_stats = run(pipe, "ltx", num_inference_steps=STEPS), sencache.get_stats(pipe)
    assert want_stats.skipped > 0
    pipe.transformer.compile_repeated_blocks(**AOT)
    sencache.apply_sencache(pipe, cfg, mode="compiled", compile_options={"backend": "eager"})
    counters.clear()
    got = run(pipe, "ltx", num_inference_steps=STEPS)
    assert torch.equal(got, want) and sencache.get_stats(pipe).computed == want_stats.computed
    assert not counters["graph_break"] and _graphs() >= 1
    graphs = _graphs()
    assert torch.equal(run(pipe, "ltx", num_inference_steps=STEPS), want) and _graphs() == graphs


# ----------------------------------------------------------------------------------------------------- GPU ---------

requires_graph = pytest.mark.skipif(not (torch.cuda.is_available() and has_conditional_nodes()),
                                    reason="needs a CUDA GPU and the extension built with CUDA")
BF16 = {"rtol": 2e-2, "atol": 2e-2}


@requires_graph
def test_graph_mode_over_inductor_blocks_equals_eager_over_them():
    """Inductor's kernels inside graph mode's IF node, whichever of compile_repeated_blocks and apply_sencache came
    first: eager SenCache's decisions and, within bf16 tolerance, its output over the same compiled blocks."""
    pipe = tiny.build_pipeline("wan", dtype=torch.bfloat16).to("cuda")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    try:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        sencache.apply_sencache(pipe, cfg)
        want, want_stats = go(pipe), sencache.get_stats(pipe)
        assert want_stats.skipped > 0
        for order in ("compiled first", "applied first"):
            if order == "applied first":
                _uncompile(pipe.transformer)
                sencache.apply_sencache(pipe, cfg, mode="graph")
                pipe.transformer.compile_repeated_blocks(fullgraph=True)
            else:
                sencache.apply_sencache(pipe, cfg, mode="graph")
            with warnings.catch_warnings():
                warnings.filterwarnings("error", message="SenCache", category=RuntimeWarning)  # no fallback
                for _ in range(2):  # captures, then replays
                    got, stats = go(pipe), sencache.get_stats(pipe)
                    assert stats.computed == want_stats.computed, order
                    assert stats.block_stack_calls == want_stats.block_stack_calls, order
                    torch.testing.assert_close(got, want, **BF16)
            assert _hook(pipe.transformer).mode == "graph" and all(_hook(pipe.transformer).stack.compiled)
    finally:
        _uncompile(pipe.transformer)


@requires_graph
def test_graph_mode_over_reduce_overhead_blocks_falls_back_to_eager_over_them():
    pipe = tiny.build_pipeline("wan", dtype=torch.bfloat16).to("cuda")
    cfg = sencache.SenCacheConfig(profile=flat_profile(pipe), **SKIPPY)
    try:
        sencache.apply_sencache(pipe, cfg)
        want = go(pipe)
        pipe.transformer.compile_repeated_blocks(fullgraph=True, mode="reduce-overhead")
        sencache.apply_sencache(pipe, cfg, mode="graph")
        with pytest.warns(RuntimeWarning, match="compiled with inductor's CUDA graphs"):
            got = go(pipe)
        assert _hook(pipe.transformer).mode == "eager"
        torch.testing.assert_close(got, want, **BF16)
        torch.testing.assert_close(go(pipe), want, **BF16)  # inductor's CUDA graphs replayed inside eager SenCache
    finally:
        _uncompile(pipe.transformer)
