"""The methods (rows) of ``benchmarks/e2e.py``: each one set up on its own twin of the transformer, and the row it is
paired with (its baseline: the uncached loop in the same execution mode).

- **eager**: the transformer as is; SenCache in eager mode, diffusers' ``FirstBlockCacheConfig`` and ``MagCacheConfig``
  hooks and cache-dit's DBCache at settings that never skip.
- **graph**: each transformer call replayed as a CUDA graph (the uncached transformer captured whole; SenCache in graph
  mode). CUDA only.
- **regional**: the blocks compiled by region, ``transformer.compile_repeated_blocks(fullgraph=True)`` (inductor; on
  the CPU smoke run dynamo's ``eager`` backend, which checks the composition without code generation), under the same
  caches. diffusers' FirstBlockCache and MagCache hook the blocks from inside the compiled regions and take their
  decision in a ``torch.compiler.disable`` function, which ``fullgraph=True`` refuses: theirs are compiled with
  ``fullgraph=False`` (a graph break at the decision).
- **graph+regional**: both: inductor's kernels inside the CUDA graph, and for SenCache inside graph mode's conditional
  node. CUDA only.

``eps=0`` rows compute every step (their ratio to the baseline is the overhead); ``pattern`` rows use an unbounded
tolerance with ``max_consecutive_skips=3``: compute, skip x3, compute, ... (their speedup is compared with the ideal
``steps / NFE``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig
from e2e_models import Call, Model, graphed_call, plain_call

import sencache
from sencache.quality_peers import dbcache_config, import_cache_dit

SKIP_PATTERN_K = 3
Setup = Callable[[Model, torch.nn.Module, int], Call]  # (model, its twin, steps) -> the call the loop makes


@dataclass(frozen=True)
class Method:
    """One row: how to set it up on a twin, the row its ratios are paired with (None for a baseline), and what it is
    (``sencache``: statistics and residual bytes are read; ``pattern``: a fixed skip pattern, compared with the ideal
    speedup; ``regional``: needs ``compile_repeated_blocks``)."""

    name: str
    setup: Setup
    baseline: str | None
    sencache: bool = False
    pattern: bool = False
    regional: bool = False  # compiles the blocks by region (models whose class names its repeated blocks)


def cache_dit_available() -> bool:
    """Whether cache-dit (DBCache) is installed (pinned in requirements-dev.txt; on a GPU machine, carried as a
    wheel)."""
    return importlib.util.find_spec("cache_dit") is not None


def _flat_profile(tr: torch.nn.Module) -> sencache.SensitivityProfile:
    ts = torch.linspace(1000, 0, 5)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.full_like(ts, 1.0), jt=torch.full_like(ts, 1e-3),
                                       metadata={"transformer_class": type(tr).__name__})


def _sencache(eps: float, mode: str) -> Setup:
    def setup(model: Model, tr: torch.nn.Module, steps: int) -> Call:
        cfg = sencache.SenCacheConfig(profile=_flat_profile(tr), eps=eps, eps_start=eps,
                                      max_consecutive_skips=SKIP_PATTERN_K, num_inference_steps=steps)
        sencache.apply_sencache(tr, cfg, mode=mode)
        return plain_call(tr)
    return setup


def _first_block(model: Model, tr: torch.nn.Module, steps: int) -> Call:
    tr.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    return plain_call(tr)


def _mag(model: Model, tr: torch.nn.Module, steps: int) -> Call:
    # ratios of 2 make MagCache's accumulated error at least 1 > threshold: it never skips
    tr.enable_cache(MagCacheConfig(threshold=0.0, num_inference_steps=steps, mag_ratios=[2.0] * steps))
    return plain_call(tr)


def _db_cache(model: Model, tr: torch.nn.Module, steps: int) -> Call:
    """cache-dit's DBCache with a zero threshold (it never skips), its first block computed (F1B0): the hooks'
    overhead, as the other rows at settings that never skip."""
    cache_dit = import_cache_dit()
    cache_dit.enable_cache(tr, cache_config=dbcache_config(0.0, steps, separate_cfg=len(model.contexts) == 2))
    return plain_call(tr)


def _graphed(setup: Setup) -> Setup:
    """The uncached transformer (after ``setup``) replayed as CUDA graphs."""
    return lambda model, tr, steps: (setup(model, tr, steps), graphed_call(tr))[1]


def _regional(setup: Setup, compile_options: dict[str, Any], fullgraph: bool = True) -> Setup:
    """``setup``, then the blocks compiled by region (SenCache takes them over whichever comes first)."""
    def regional(model: Model, tr: torch.nn.Module, steps: int) -> Call:
        call = setup(model, tr, steps)
        tr.compile_repeated_blocks(**{**compile_options, "fullgraph": fullgraph})
        return call
    return regional


def _uncached(model: Model, tr: torch.nn.Module, steps: int) -> Call:
    return plain_call(tr)


def methods(graph: bool, compile_options: dict[str, Any]) -> list[Method]:
    """The rows, baselines first within each mode. ``graph``: the CUDA-graph rows too (CUDA only)."""
    peers = [("FirstBlockCache thr=0", _first_block, False), ("MagCache thr=0", _mag, False)]  # name, setup, fullgraph
    if cache_dit_available():
        peers.append(("DBCache thr=0", _db_cache, True))
    rows = [Method("uncached eager", _uncached, None),
            Method("SenCache eps=0 eager", _sencache(0.0, "eager"), "uncached eager", sencache=True),
            Method("SenCache pattern eager", _sencache(1e30, "eager"), "uncached eager", sencache=True, pattern=True),
            *(Method(f"{name} eager", setup, "uncached eager") for name, setup, _ in peers)]
    regional = "uncached regional"
    rows += [Method(regional, _regional(_uncached, compile_options), None, regional=True),
             Method("SenCache eps=0 regional", _regional(_sencache(0.0, "eager"), compile_options), regional,
                    sencache=True, regional=True),
             *(Method(f"{name} regional", _regional(setup, compile_options, fullgraph), regional, regional=True)
               for name, setup, fullgraph in peers)]
    if graph:
        both = "uncached graph+regional"
        rows += [Method("uncached graph", _graphed(_uncached), None),
                 Method("SenCache eps=0 graph", _sencache(0.0, "graph"), "uncached graph", sencache=True),
                 Method("SenCache pattern graph", _sencache(1e30, "graph"), "uncached graph", sencache=True,
                        pattern=True),
                 Method(both, _graphed(_regional(_uncached, compile_options)), None, regional=True),
                 Method("SenCache eps=0 graph+regional", _regional(_sencache(0.0, "graph"), compile_options), both,
                        sencache=True, regional=True),
                 Method("SenCache pattern graph+regional", _regional(_sencache(1e30, "graph"), compile_options), both,
                        sencache=True, pattern=True, regional=True)]
    return rows
