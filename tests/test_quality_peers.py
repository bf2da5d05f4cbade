"""The quality harness's peers from other libraries (sencache.quality_peers): cache-dit's DBCache rows and diffusers'
TaylorSeer on the reference model, with few steps."""

import ast
from pathlib import Path

import pytest
import torch

from sencache import quality_peers as peers
from sencache.quality import Pair, generate
from sencache.quality_methods import METHODS, applied
from sencache.reference.model import load_reference_pipeline

PEERS = ("dbcache", "dbcache_ts", "dbcache_mask", "taylorseer")
PAIR = Pair("red circle grow", 1)


@pytest.fixture(scope="module")
def pipe():
    return load_reference_pipeline()


@pytest.fixture(scope="module")
def reference(pipe):
    """The uncached run at 3 steps, before any peer was applied."""
    return generate(pipe, PAIR, 3)


def _state(pipe):
    """What a row may leave behind: the attributes of the pipeline's class, of the pipeline (its objects; the last
    call's numbers aside) and of every module of the transformer (objects by identity), their torch hooks and diffusers'
    hooks. diffusers' ``disable_cache`` leaves ``_cache_config = None`` and an empty hook registry with its forward
    wrapper on each module it hooked (the fbc and magcache rows too): an attribute set to None counts as unset, a module
    by the hooks in its registry, none as no registry; but the transformer's own forward is compared (cache-dit
    replaces it)."""
    plain = bool | int | float | str | None

    def attrs(obj, numbers=True):
        return {k: v if isinstance(v, plain) else id(v) for k, v in vars(obj).items()
                if k not in ("forward", "_diffusers_hook") and v is not None and (numbers or not isinstance(v, plain))}

    def hooks(m):
        registry = getattr(m, "_diffusers_hook", None)
        return list(m._forward_pre_hooks), list(m._forward_hooks), [] if registry is None else list(registry.hooks)

    modules = {name: (attrs(m), hooks(m)) for name, m in pipe.transformer.named_modules()}
    return dict(vars(type(pipe))), attrs(pipe, numbers=False), modules, vars(pipe.transformer).get("forward")


_APPLIED_ROWS = set()


def _generate_with(pipe, name, threshold, steps):
    before = _state(pipe)
    with applied(pipe, name, threshold, {}, steps):
        g = generate(pipe, PAIR, steps)
    assert _state(pipe) == before, name  # removed without a trace
    _APPLIED_ROWS.add(name)
    return g


def test_rows_and_schedules():
    for name in PEERS:
        m = METHODS[name]
        assert not m.in_default_run and m.calibrate is None and m.targeted == (name in ("dbcache_mask", "taylorseer"))
    # the mask: cache-dit's helper expands the bins into `computed` steps, first and last computed, gaps within 1
    cache_dit = peers.import_cache_dit()
    for steps, computed in ((50, 15), (50, 30), (8, 4), (8, 2), (7, 7), (5, 1)):
        mask = cache_dit.steps_mask(*peers.mask_bins(computed, steps), total_steps=steps)
        assert len(mask) == steps and sum(mask) == computed and mask[0] == 1 and (computed == 1 or mask[-1] == 1)
        gaps = "".join(map(str, mask)).strip("1").split("1")
        assert max(map(len, gaps)) - min(map(len, gaps)) <= 1, mask
    assert cache_dit.steps_mask(*peers.mask_bins(4, 8), total_steps=8) == [1, 0, 1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match=r"computed steps must be in \[1, 8\], got 0"):
        peers.mask_bins(0, 8)
    # TaylorSeer: the budget's NFE at 50 steps, at most 3 forecast steps in a row, ties to the shorter interval
    for budget in (0.6, 0.5, 0.4, 0.3):
        warmup, interval = peers.taylorseer_schedule(budget * 50, 50, 3)
        computed = peers.taylorseer_computed(warmup, interval, 50)
        assert len(computed) == round(budget * 50) and interval <= 4 and computed[0] == 0, (budget, warmup, interval)
    assert peers.taylorseer_schedule(25, 50, 3) == (1, 2)  # every other step, not a longer interval after a warm-up
    assert peers.taylorseer_computed(3, 5, 12) == [0, 1, 2, 4, 9]  # diffusers' default: step 3 is already forecast


def test_runtime_does_not_import_cache_dit():
    root = Path(__file__).resolve().parents[1]
    importers = set()
    for path in (root / "sencache").rglob("*.py"):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "cache_dit" for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"sencache/quality_peers.py"}  # imported inside its functions, never at module level
    tree = ast.parse((root / "sencache" / "quality_peers.py").read_text())
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) and "cache_dit" in ast.unparse(n) for n in tree.body)


@pytest.mark.parametrize("name", ["dbcache", "dbcache_ts"])
def test_dbcache_at_threshold_zero_computes_every_step_bit_for_bit(pipe, reference, name):
    g = _generate_with(pipe, name, 0.0, 3)
    assert g.nfe == 3 and torch.equal(g.video, reference.video)


@pytest.mark.slow
def test_dbcache_skips_at_a_loose_threshold_and_taylorseer_forecasts(pipe):
    """At the top of the search range every step the cap allows is cached: compute, 3 cached, compute, cached. The
    last cached step comes after two computed ones, so the TaylorSeer calibrator forecasts instead of reusing."""
    hi = peers.DBCACHE_RANGE[1]
    plain, forecast = (_generate_with(pipe, name, hi, 6) for name in ("dbcache", "dbcache_ts"))
    for g in (plain, forecast):
        assert g.nfe == 2 and g.timeline == [1, 0, 0, 0, 1, 0]
    assert not torch.equal(plain.video, forecast.video)


@pytest.mark.parametrize("name", ["dbcache_mask", "taylorseer"])
def test_targeted_rows_realize_their_schedule(pipe, reference, name):
    """Half of 3 steps: 2 computed (the mask rounds 1.5 to 2; TaylorSeer cannot compute fewer than 2 of 3), the steps
    of the row's own schedule."""
    if name == "dbcache_mask":
        promised = peers.import_cache_dit().steps_mask(*peers.mask_bins(2, 3), total_steps=3)
    else:
        computed = peers.taylorseer_computed(*peers.taylorseer_schedule(1.5, 3, 3), 3)
        promised = [int(s in computed) for s in range(3)]
    g = _generate_with(pipe, name, 0.5, 3)
    assert g.timeline == promised == [1, 0, 1] and g.nfe == 2 and not torch.equal(g.video, reference.video)


def test_removal_restores_the_uncached_output(pipe, reference):
    """After every row was applied and removed (in the tests above; here those that did not run), the uncached run is
    the same bit for bit."""
    for name in sorted(set(PEERS) - _APPLIED_ROWS):
        _generate_with(pipe, name, 0.5, 3)
    assert torch.equal(generate(pipe, PAIR, 3).video, reference.video)
    with pytest.raises(RuntimeError, match="no cache-dit row of the quality harness is applied"):
        peers.dbcache_remove(pipe)
