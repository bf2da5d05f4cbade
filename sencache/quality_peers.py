"""Peers of the quality benchmark from other libraries, rows of :data:`sencache.quality_methods.METHODS` (opt-in):
cache-dit's DBCache (threshold searched; alone and with its TaylorSeer calibrator), cache-dit's static step-computation
mask and diffusers' TaylorSeer cache (both targeted: the NFE budget sets the schedule).

cache-dit (pinned in requirements-dev.txt) is imported here only, lazily; the runtime never imports it. It is told about
the reference model with a ``BlockAdapter`` on the *pipeline*: the transformer's ``blocks`` list, whose blocks take
``hidden_states, encoder_hidden_states`` and return the hidden states alone (``ForwardPattern.Pattern_2``), and CFG in
separate cond/uncond calls. On a pipeline cache-dit resets its state at the start of every pipeline call. Applied to the
transformer alone (as ``benchmarks/e2e.py`` does, where thresholds never skip) its state persists across calls and is
only renewed after ``num_inference_steps`` leading calls: seen on the reference model (8 steps, CFG), the second call's
first step ran on the first call's state and the cond/uncond roles swapped from then on (timelines [1, .5, 0, 0, .5, .5,
0, 0] and [.5, 1, 0, 0, 0, 1, 0, 0] after [1, 0, 0, 0, 1, 0, 0, 0]).

Every DBCache row runs F1B0: the first block at every step (its residual's relative L1 change against the last computed
step's decides, as FirstBlockCache's), no block after the cached middle; no warm-up (cache-dit's default of 8 computed
steps would leave no room for a 30% budget under the cap); at most ``max_skips`` cached steps in a row
(``max_continuous_cached_steps``, the other rows' K).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["DBCACHE_RANGE", "dbcache_apply", "dbcache_config", "dbcache_mask_apply", "dbcache_remove",
           "import_cache_dit", "mask_bins", "taylorseer_apply", "taylorseer_computed", "taylorseer_schedule"]

# cache-dit treats a threshold >= 1 as "always similar": the top of the range caches all that the cap allows.
DBCACHE_RANGE = (1e-4, 1.0)
_APPLIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> (cache-dit's adapter, had its own forward)


def import_cache_dit() -> Any:
    """``cache_dit``, with its info log (the configuration, at every step) off unless ``CACHE_DIT_LOG_LEVEL`` says."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "warning")
    import cache_dit

    return cache_dit


def dbcache_config(threshold: float, steps: int, separate_cfg: bool, max_skips: int = -1,
                   mask: list[int] | None = None) -> Any:
    """cache-dit's ``DBCacheConfig`` for F1B0 without warm-up at ``threshold``; ``max_skips``: cached steps in a row at
    most (-1: no cap); ``mask``: a static step-computation mask (1: compute, 0: cached, whatever the threshold)."""
    cache_dit = import_cache_dit()
    return cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                   max_warmup_steps=0, max_continuous_cached_steps=max_skips,
                                   num_inference_steps=steps, enable_separate_cfg=separate_cfg,
                                   steps_computation_mask=mask,
                                   steps_computation_policy="dynamic" if mask is None else "static")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """cache-dit's warnings while it installs or releases its hooks (pattern check skipped because diffusers' hook
    registry is on the transformer, hooks disabled) kept off the benchmark's output."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _enable(pipe: Any, config: Any, calibrator: Any = None) -> None:
    cache_dit = import_cache_dit()
    if pipe in _APPLIED:
        raise RuntimeError("cache-dit is already applied to this pipeline by the quality harness; remove it first")
    tr = pipe.transformer
    own_forward = "forward" in vars(tr)
    with _quiet():
        adapter = cache_dit.BlockAdapter(pipe=pipe, transformer=tr, blocks=tr.blocks,
                                         forward_pattern=cache_dit.ForwardPattern.Pattern_2, has_separate_cfg=True)
        _APPLIED[pipe] = (cache_dit.enable_cache(adapter, cache_config=config, calibrator_config=calibrator),
                          own_forward)


def dbcache_remove(pipe: Any) -> None:
    """Undo a DBCache row: cache-dit's release, then the bound forward it leaves on the transformer."""
    if pipe not in _APPLIED:
        raise RuntimeError("no cache-dit row of the quality harness is applied to this pipeline")
    adapter, own_forward = _APPLIED.pop(pipe)
    with _quiet():
        import_cache_dit().disable_cache(adapter)
    if not own_forward:
        vars(pipe.transformer).pop("forward", None)


def dbcache_apply(max_skips: int, taylorseer_order: int | None = None) -> Callable[[Any, float, Any, int], None]:
    """A DBCache row at a threshold: ``residual_diff_threshold``; ``taylorseer_order``: with cache-dit's TaylorSeer
    calibrator of that order (its default is 1), which forecasts the cached residual from the computed steps'."""

    def apply(pipe: Any, threshold: float, _calibration: None, steps: int) -> None:
        calibrator = None
        if taylorseer_order is not None:
            calibrator = import_cache_dit().TaylorSeerCalibratorConfig(taylorseer_order=taylorseer_order)
        _enable(pipe, dbcache_config(threshold, steps, True, max_skips), calibrator)

    return apply


def mask_bins(computed: int, steps: int) -> tuple[list[int], list[int]]:
    """cache-dit's compute and cache runs for ``computed`` of ``steps`` steps spread evenly: single computed steps, the
    first and (from 2 on) the last among them, the cached steps shared out between the gaps (lengths differ by 1 at
    most). cache-dit's named policies ("slow" ... "ultra") fix their own ratio, so they cannot follow a budget."""
    if not 1 <= computed <= steps:
        raise ValueError(f"computed steps must be in [1, {steps}], got {computed}")
    gaps, cached = computed - 1, steps - computed
    if gaps == 0:
        return [1], [cached]
    return [1] * computed, [cached * (j + 1) // gaps - cached * j // gaps for j in range(gaps)]


def dbcache_mask_apply(pipe: Any, budget: float, _calibration: None, steps: int) -> None:
    """cache-dit's static step-computation mask (a targeted row): ``round(budget * steps)`` computed steps
    (:func:`mask_bins`, expanded by ``cache_dit.steps_mask``), every other step cached whatever its residual change;
    F1B0, so the first block still runs at the cached steps."""
    computed = min(max(math.floor(budget * steps + 0.5), 1), steps)
    mask = import_cache_dit().steps_mask(*mask_bins(computed, steps), total_steps=steps)
    if sum(mask) != computed or len(mask) != steps:
        raise RuntimeError(f"cache_dit.steps_mask made {mask} from {computed} of {steps} steps; its helper changed")
    _enable(pipe, dbcache_config(0.0, steps, True, mask=mask))


def taylorseer_computed(warmup: int, interval: int, steps: int) -> list[int]:
    """The steps diffusers' TaylorSeer hook computes (``TaylorSeerCacheHook._measure_should_compute`` without a
    cool-down): those before ``disable_cache_before_step``, then one every ``cache_interval`` from the step after it
    (the step at it is forecast)."""
    return [s for s in range(steps) if s < warmup or (s - warmup - 1) % interval == 0]


def taylorseer_schedule(target: float, steps: int, max_skips: int) -> tuple[int, int]:
    """``(disable_cache_before_step, cache_interval)`` whose computed steps are closest to ``target``: intervals up to
    ``max_skips + 1`` (so at most ``max_skips`` forecast steps in a row, as the other rows' cap), warm-ups from 1 (a
    forecast needs one computed step); ties go to the shorter interval (the shortest forecast horizon), then to the
    shorter warm-up."""
    candidates = [(w, i) for i in range(1, max_skips + 2) for w in range(1, steps + 1)]
    return min(candidates, key=lambda c: (abs(len(taylorseer_computed(*c, steps)) - target), c[1], c[0]))


def taylorseer_apply(max_skips: int) -> Callable[[Any, float, Any, int], None]:
    """diffusers' TaylorSeer cache as a targeted row: the schedule of :func:`taylorseer_schedule` for
    ``budget * steps``; first order (its default); Taylor factors kept in the transformer's dtype (its default,
    bfloat16, would round a float32 model's forecasts); its lite mode, in which the blocks return zeros on forecast
    steps and the output projection is forecast. Its default mode forecasts the attention layers only: the feed-forward
    layers run at every step, so no block-stack evaluation is skipped (the harness's NFE counts the last block's
    feed-forward calls) and it cannot be matched at a budget."""

    def apply(pipe: Any, budget: float, _calibration: None, steps: int) -> None:
        from diffusers import TaylorSeerCacheConfig

        warmup, interval = taylorseer_schedule(budget * steps, steps, max_skips)
        pipe.transformer.enable_cache(TaylorSeerCacheConfig(
            cache_interval=interval, disable_cache_before_step=warmup, max_order=1,
            taylor_factors_dtype=pipe.transformer.dtype, use_lite_mode=True))

    return apply
