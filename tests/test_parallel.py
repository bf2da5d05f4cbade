"""SenCache under diffusers' context parallelism (sencache/parallel.py): two gloo ranks on the CPU.

One process group serves the whole module: a module-scoped fixture forks two ranks once (they inherit this process's
imports, which a spawned rank would spend seconds redoing), runs every scenario in them and returns their results.
gloo's collective timeout and the join timeout turn a hang into a failure instead of blocking CI.

Facts the scenarios rely on: diffusers divides by ``torch.accelerator.device_count()``, 0 without an accelerator
(patched to 1); ring attention needs an attention op that returns the log-sum-exp, which on the CPU
``aten::_scaled_dot_product_flash_attention_for_cpu`` does (patched in for the ring runs only); LTX-Video's text mask
fails under Ulysses on the CPU, and the tiny pipeline's is all ones, so its transformer is called without it.
"""

import contextlib
import datetime
import logging
import os
import tempfile
import traceback
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import ContextParallelConfig

import sencache
from sencache.hooks import _hook
from sencache.modes import graph as graph_mode
from sencache.parallel import CP_HOOKS, Layout, ParallelState, layout
from sencache.teacache import TeaCacheConfig, apply_teacache
from sencache_kernels import COMPUTE, DecisionState
from tests.helpers import STEPS, calibration_kwargs, cp_attention, cp_pipeline, flat_profile, run

WORLD = 2
COLLECTIVE_TIMEOUT = 60  # seconds a rank waits in one collective before gloo raises
JOIN_TIMEOUT = 300  # seconds for the whole module's scenarios
ATTENTION = {"ulysses": {"ulysses_degree": WORLD}, "ring": {"ring_degree": WORLD}}
ORDERS = ("before", "after")  # apply_sencache before or after enable_parallelism
ARCHS = ("wan", "ltx")  # Wan splits at its first block, LTX-Video at the transformer's input


def _config(pipe, eps=0.3):
    return sencache.SenCacheConfig(profile=flat_profile(pipe, jx=1.0, jt=1e-3), eps=eps, eps_start=eps,
                                   max_consecutive_skips=3)


def _cached(pipe, arch):
    out = run(pipe, arch)
    stats = sencache.get_stats(pipe)
    return {"out": out, "computed": stats.computed, "scores": stats.scores, "thresholds": stats.thresholds}


def _parallel(pipe, attention):
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(**ATTENTION[attention]))


def _cached_run(arch, attention, order, eps=0.3):
    """A SenCache run under context parallelism (``order``: apply_sencache before or after enable_parallelism), then
    the same pipeline's output after remove_sencache."""
    pipe = cp_pipeline(arch)
    if order == "before":
        sencache.apply_sencache(pipe, _config(pipe, eps))
    _parallel(pipe, attention)
    if order == "after":
        sencache.apply_sencache(pipe, _config(pipe, eps))
    res = _cached(pipe, arch)
    state = _hook(pipe.transformer).clock.state
    res["state"], res["split"] = type(state).__name__, state.layout.split
    sencache.remove_sencache(pipe)
    res["removed"] = run(pipe, arch)
    return res


def _plain(arch, attention):
    pipe = cp_pipeline(arch)
    _parallel(pipe, attention)
    return run(pipe, arch)


def _one_process(arch):
    pipe = cp_pipeline(arch)
    sencache.apply_sencache(pipe, _config(pipe))
    return _cached(pipe, arch)


def _disagreeing(rank, arch, order):
    """Rank 1 never skips (eps=0) where rank 0 would: every rank must compute every step, with no hang."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("sencache").addHandler(handler)
    try:
        res = _cached_run(arch, "ulysses", order, eps=0.3 if rank == 0 else 0.0)
    finally:
        logging.getLogger("sencache").removeHandler(handler)
    return {**res, "logged": [r.getMessage() for r in records]}


def _calibration(where):
    """A calibration of tiny LTX-Video (split at its input) under Ulysses or in one process."""
    pipe = cp_pipeline("ltx")
    if where == "ulysses":
        _parallel(pipe, "ulysses")
    profile = sencache.calibrate(pipe, num_samples=1, num_inference_steps=4, progress=False,
                                 **calibration_kwargs("ltx", pipe, 4))
    return profile.timesteps, profile.jx, profile.jt


def _graph_falls_back():
    """Graph mode on a context-parallel Wan, its CPU check stubbed out: it must fall back to eager for CP's reason."""
    pipe = cp_pipeline("wan")
    _parallel(pipe, "ulysses")
    sencache.apply_sencache(pipe, _config(pipe), mode="graph")
    unavailable, graph_mode.unavailable_reason = graph_mode.unavailable_reason, lambda x: None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = _cached(pipe, "wan")
    finally:
        graph_mode.unavailable_reason = unavailable
    return {**res, "mode": _hook(pipe.transformer).mode, "warnings": [str(w.message) for w in caught]}


def _teacache_refuses():
    pipe = cp_pipeline("wan")
    _parallel(pipe, "ulysses")
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.1, coefficients=[1.0, 0.0], num_inference_steps=STEPS))
    with pytest.raises(ValueError) as err:
        run(pipe, "wan")
    return str(err.value)


def _split_hook_positions():
    """diffusers' split hooks' argument positions on a Wan, as ``layout`` resolves them before any call (so that
    compiled mode can trace the hooks), and as the hooks that need them resolve them on their first call."""
    def positions(pipe):
        return {(name, type(module).__name__): hook.module_forward_metadata.cached_parameter_indices
                for module in pipe.transformer.modules() if hasattr(module, "_diffusers_hook")
                for name, hook in module._diffusers_hook.hooks.items() if name.startswith(CP_HOOKS[0])}

    ours, theirs = cp_pipeline("wan"), cp_pipeline("wan")
    for pipe in (ours, theirs):
        _parallel(pipe, "ulysses")
    before = positions(ours)
    layout(ours.transformer, torch.zeros(1, 4), "sencache", "hidden_states")
    run(theirs, "wan", num_inference_steps=2)
    return before, positions(ours), positions(theirs)


def _decisions(rank, split, eps):
    """Six steps of a random latent walk decided by one process's DecisionState on the whole latent, and on this
    rank by ParallelState's eager decide and its step under torch.compile(fullgraph=True): per step the three COMPUTE
    bits and score lists (split: each rank holds its shard along dim 1)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 3, generator=gen)
    moves = [0.02 * torch.randn(2, 8, 3, generator=gen) for _ in range(6)]
    mine = (lambda v: v.chunk(WORLD, dim=1)[rank]) if split else (lambda v: v)
    ones, small = torch.ones(2), torch.full((2,), 1e-3)
    layout = Layout(dist.group.WORLD, split, 24)
    one, eager, compiled = DecisionState(x), ParallelState(mine(x), layout), ParallelState(mine(x), layout)
    step = torch.compile(compiled.step, fullgraph=True, backend="aot_eager")
    rows = []
    for k, move in enumerate(moves):
        x = x + move
        t = torch.full((2,), 1000.0 - 100 * k)
        bits = [one.decide(x, t, ones, small, eps, k == 0, 3), eager.decide(mine(x), t, ones, small, eps, k == 0, 3)]
        compiled.set_inputs(eps, k == 0)
        step(mine(x), t, ones, small, 3)
        bits.append(int(compiled.flag))
        rows.append(([b & COMPUTE for b in bits], [s.score.tolist() for s in (one, eager, compiled)]))
    return rows


def _scenarios(rank):
    """Every scenario, each result or the traceback of its error (both ranks run the same scenarios in order)."""
    todo = []
    for arch in ARCHS:
        todo.append(((arch, "one process"), contextlib.nullcontext(), lambda a=arch: _one_process(a)))
        for attention in ATTENTION:
            todo.append(((arch, attention, "plain"), cp_attention(attention),
                         lambda a=arch, at=attention: _plain(a, at)))
            for order in ORDERS:
                todo.append(((arch, attention, order), cp_attention(attention),
                             lambda a=arch, at=attention, o=order: _cached_run(a, at, o)))
    for arch, order in (("wan", "after"), ("ltx", "before")):
        todo.append(((arch, "disagree"), contextlib.nullcontext(), lambda a=arch, o=order: _disagreeing(rank, a, o)))
    todo.append((("graph",), contextlib.nullcontext(), _graph_falls_back))
    todo.append((("teacache",), contextlib.nullcontext(), _teacache_refuses))
    todo.append((("positions",), contextlib.nullcontext(), _split_hook_positions))  # Wan's first block: positional
    for split in (False, True):
        todo.append((("decisions", split), contextlib.nullcontext(), lambda sp=split: _decisions(rank, sp, 0.05)))
        todo.append((("decisions disagree", split), contextlib.nullcontext(),
                     lambda sp=split: _decisions(rank, sp, 0.05 if rank == 0 else 0.0)))
    for where in ("one process", "ulysses"):
        todo.append((("calibration", where), contextlib.nullcontext(), lambda w=where: _calibration(w)))
    results = {}
    for key, attention, scenario in todo:
        try:
            with attention:
                results[key] = scenario()
        except Exception:  # noqa: BLE001 - reported by the tests that read this scenario
            results[key] = _Failed(traceback.format_exc())
    return results


class _Failed(str):
    """A scenario's traceback in place of its result."""


def _result(ranks, rank, key):
    res = ranks[rank][key]
    if isinstance(res, _Failed):
        pytest.fail(f"rank {rank}, scenario {key}:\n{res}")
    return res


def _rank(rank, init_file, out_dir):
    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # diffusers divides by it (0 without an accelerator)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
        results = _scenarios(rank)
    except BaseException:  # noqa: BLE001 - reported by the test
        results = {"error": traceback.format_exc()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    os._exit(0)  # a forked rank leaves without running the parent's exit handlers


@pytest.fixture(scope="module")
def ranks():
    """Every scenario's results per rank: ``{rank: {key: value}}``."""
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank, args=(r, os.path.join(tmp, "init"), tmp)) for r in range(WORLD)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(JOIN_TIMEOUT)
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
        assert not hung, f"ranks {hung} did not finish within {JOIN_TIMEOUT} s"
        results = {r: torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)}
    for r, res in results.items():
        assert "error" not in res, f"rank {r}:\n{res['error']}"  # before or after the scenarios
    return results


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("attention", list(ATTENTION))
@pytest.mark.parametrize("arch", ARCHS)
def test_same_decisions_on_every_rank_as_in_one_process(ranks, arch, attention, order):
    one = _result(ranks, 0, (arch, "one process"))
    assert 0 < sum(one["computed"]) < STEPS  # the scenario skips some steps
    for r in range(WORLD):
        res = _result(ranks, r, (arch, attention, order))
        assert res["computed"] == one["computed"]
        assert res["thresholds"] == one["thresholds"]
        for got, want in zip(res["scores"], one["scores"], strict=True):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert res["state"] == "ParallelState"
        assert res["split"] == (arch == "ltx" and order == "before")  # LTX splits at the transformer's input
        torch.testing.assert_close(res["out"], one["out"], rtol=1e-5, atol=1e-5)
    first, other = (_result(ranks, r, (arch, attention, order)) for r in range(WORLD))
    assert first["scores"] == other["scores"]  # statistics identical on every rank
    assert torch.equal(first["out"], other["out"])


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("attention", list(ATTENTION))
@pytest.mark.parametrize("arch", ARCHS)
def test_remove_sencache_restores_plain_context_parallel_output(ranks, arch, attention, order):
    for r in range(WORLD):
        plain = _result(ranks, r, (arch, attention, "plain"))
        assert torch.equal(_result(ranks, r, (arch, attention, order))["removed"], plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_disagreement_computes_on_every_rank_instead_of_hanging(ranks, arch):
    first, other = (_result(ranks, r, (arch, "disagree")) for r in range(WORLD))
    for r, res in enumerate((first, other)):
        assert res["computed"] == [True] * STEPS  # rank 1 computes every step, so rank 0 follows
        assert torch.equal(res["out"], _result(ranks, r, (arch, "ulysses", "plain")))
    assert any("different decisions" in m for m in first["logged"])
    assert not other["logged"]  # rank 1 was never overruled


@pytest.mark.parametrize("split", [False, True])
def test_eager_and_compiled_decisions_equal_one_process(ranks, split):
    computed = []
    for r in range(WORLD):
        for (one, eager, compiled), (s_one, s_eager, s_compiled) in _result(ranks, r, ("decisions", split)):
            assert one == eager == compiled
            assert s_eager == s_compiled
            assert s_eager == pytest.approx(s_one, rel=1e-5)
            computed.append(one)
    assert 0 < sum(computed) < len(computed)  # some steps skip


@pytest.mark.parametrize("split", [False, True])
def test_compiled_guard_computes_where_any_rank_computes(ranks, split):
    for r in range(WORLD):
        rows = _result(ranks, r, ("decisions disagree", split))
        assert all(eager == compiled == COMPUTE for (_, eager, compiled), _ in rows)  # rank 1 (eps=0) always computes
    assert not all(one for (one, _, _), _ in _result(ranks, 0, ("decisions disagree", split)))  # rank 0 alone skips


def test_graph_mode_falls_back_to_eager_under_context_parallelism_with_the_reason(ranks):
    for r in range(WORLD):
        res = _result(ranks, r, ("graph",))
        assert res["mode"] == "eager"
        assert any("context parallelism" in w and "eager mode instead" in w for w in res["warnings"])
        assert res["computed"] == _result(ranks, r, ("wan", "ulysses", "after"))["computed"]
        assert torch.equal(res["out"], _result(ranks, r, ("wan", "ulysses", "after"))["out"])


def test_teacache_baseline_refuses_context_parallelism(ranks):
    for r in range(WORLD):
        assert "does not run under context parallelism" in _result(ranks, r, ("teacache",))


def test_layout_resolves_split_hook_positions_as_diffusers_does(ranks):
    for r in range(WORLD):
        before, ours, theirs = _result(ranks, r, ("positions",))
        assert before and all(v is None for v in before.values())
        assert all(ours.values())
        resolved = {k: v for k, v in theirs.items() if v is not None}  # hooks that looked their arguments up
        assert resolved and all(ours[k] == v for k, v in resolved.items())


def test_calibration_under_context_parallelism_equals_one_process(ranks):
    for r in range(WORLD):
        one = _result(ranks, r, ("calibration", "one process"))
        for got, want in zip(_result(ranks, r, ("calibration", "ulysses")), one, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
