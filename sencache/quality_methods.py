"""The caching methods of the quality benchmark (:mod:`sencache.quality`), one table row each: name, label, threshold
search range, calibration, how to apply and remove it, and how its calibration is kept in ``quality.json``.

SenCache is calibrated with :func:`sencache.calibrate`, diffusers' MagCache with its own calibrate mode (ratios
averaged over the calibration pairs and CFG contexts), the TeaCache baseline by fitting its polynomial
(:mod:`sencache.teacache`); diffusers' FirstBlockCache needs no calibration, nor do the opt-in peers of
:mod:`sencache.quality_peers` (cache-dit's DBCache rows, diffusers' TaylorSeer).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sencache import quality_peers as peers
from sencache.config import EPS_START_RATIO

__all__ = ["METHODS", "Method", "Pair", "applied", "calibrate_methods", "magcache_ratios"]

_K = 3  # consecutive-skip cap of SenCache and MagCache (the paper's setting)


@dataclass(frozen=True)
class Pair:
    """One generation: a condition of the reference dataset and the seed of the sampler's noise."""

    condition: str
    seed: int


@dataclass(frozen=True)
class Method:
    """One method of the benchmark.

    Attributes:
        name: its key in the CLI (``--methods``) and in ``quality.json``.
        label: its name in the table and the plots.
        search_range: the thresholds searched (log-space bisection inside it).
        apply: ``apply(pipe, threshold, calibration, steps)`` enables it on ``pipe``.
        remove: ``remove(pipe)`` undoes ``apply``.
        calibrate: ``calibrate(pipe, pairs, steps, progress) -> calibration``; ``None`` when it needs none.
        record_key: the key of its calibration in ``quality.json`` (``None`` for no calibration).
        to_record: the calibration as JSON values.
        in_default_run: whether a run without ``--methods`` includes it (comparison rows do not).
        shares: the method whose calibration it uses instead of one of its own (``None``: its own, or none).
        targeted: its threshold is the NFE budget itself (a fraction of the steps), not searched on the tuning pairs.
    """

    name: str
    label: str
    search_range: tuple[float, float]
    apply: Callable[[Any, float, Any, int], None]
    remove: Callable[[Any], None]
    calibrate: Callable[[Any, Sequence[Pair], int, bool], Any] | None = None
    record_key: str | None = None
    to_record: Callable[[Any], Any] = lambda calibration: calibration
    in_default_run: bool = True
    shares: str | None = None
    targeted: bool = False


# ------------------------------------------------------------------------------------------------------ SenCache
def _sencache_calibrate(pipe: Any, pairs: Sequence[Pair], steps: int, progress: bool,
                        estimator: str = "chained") -> Any:
    import sencache

    return sencache.calibrate(pipe, prompts=[p.condition for p in pairs], seeds=[p.seed for p in pairs],
                              num_samples=len(pairs), num_inference_steps=steps, progress=progress,
                              estimator=estimator)


def _sencache_central_calibrate(pipe: Any, pairs: Sequence[Pair], steps: int, progress: bool) -> Any:
    return _sencache_calibrate(pipe, pairs, steps, progress, estimator="central")


def _sencache_apply(pipe: Any, threshold: float, profile: Any, steps: int, forecast: str = "reuse") -> None:
    import sencache

    cfg = sencache.SenCacheConfig(profile=profile, eps=threshold, eps_start=threshold * EPS_START_RATIO,
                                  max_consecutive_skips=_K, forecast=forecast)
    sencache.apply_sencache(pipe, cfg)


def _forecast_apply(pipe: Any, threshold: float, profile: Any, steps: int) -> None:
    _sencache_apply(pipe, threshold, profile, steps, forecast="linear")


def _target_apply(schedule: str, forecast: str = "reuse") -> Callable[[Any, float, Any, int], None]:
    """SenCache with its tolerances planned for ``budget * steps`` NFE (``sencache.planner``), on the sencache
    profile."""

    def apply(pipe: Any, budget: float, profile: Any, steps: int) -> None:
        import sencache

        cfg = sencache.SenCacheConfig(profile=profile, target_nfe=budget * steps, schedule=schedule,
                                      max_consecutive_skips=_K, forecast=forecast)
        sencache.apply_sencache(pipe, cfg)

    return apply


def _sencache_remove(pipe: Any) -> None:
    import sencache

    sencache.remove_sencache(pipe)


def _profile_record(profile: Any) -> dict[str, Any]:
    record = {"timesteps": profile.timesteps.tolist(), "jx": profile.jx.tolist(), "jt": profile.jt.tolist(),
              "estimator": profile.metadata.get("estimator")}
    for name in ("jx", "jt"):  # the sample-to-sample spread per step, when the profile kept its samples
        samples = getattr(profile, f"{name}_samples")
        if samples is not None and samples.shape[0] > 1:
            record[f"{name}_std"] = samples.double().std(0).tolist()
    return record


# ------------------------------------------------------------------------------------------------------ MagCache
def magcache_ratios(pipe: Any, pairs: Sequence[Pair], steps: int, progress: bool = False) -> list[float]:
    """MagCache's ratios on ``pipe``: diffusers' calibrate mode on each pair, averaged over pairs and CFG contexts.

    The hook on the last block keeps the ratios in its state (``MagCacheState.calibration_ratios``, one state per
    cache context), appending one per step; after the last step it prints them and starts a fresh list. A forward
    pre-hook on that block holds on to each context's list of the running call, which is complete once the call has
    returned. The averaging order is pairs, then contexts in the order they first run (cond, uncond).
    """
    from diffusers import MagCacheConfig
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.mag_cache import MagCacheBlockHook

    transformer = pipe.transformer
    tail = transformer.blocks[-1]
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    runs: list[list[float]] = []
    handle = None
    try:
        hooks = HookRegistry.check_if_exists_or_initialize(tail).hooks.values()
        hook = next((h for h in hooks if isinstance(h, MagCacheBlockHook) and h.is_tail), None)
        if hook is None:
            raise RuntimeError("diffusers' MagCache put no tail hook on the last block; its hook may have changed")

        def keep(*_: Any) -> None:
            ratios = hook.state_manager.get_state().calibration_ratios
            if not any(r is ratios for r in runs):
                runs.append(ratios)

        handle = tail.register_forward_pre_hook(keep)
        for p in pairs:
            # the calibrate mode also prints each context's ratios after its last step: kept off the benchmark's output
            with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
                pipe(p.condition, num_inference_steps=steps, generator=torch.Generator().manual_seed(p.seed),
                     output_type="latent")
    finally:
        if handle is not None:
            handle.remove()
        transformer.disable_cache()
    if not runs or any(len(r) != steps for r in runs):
        raise RuntimeError(f"MagCache's calibrate mode left {[len(r) for r in runs]} ratios per context, not {steps} "
                           "each; the diffusers MagCache hook may have changed")
    return torch.tensor(runs, dtype=torch.float64).mean(0).tolist()


def _magcache_apply(pipe: Any, threshold: float, ratios: list[float], steps: int) -> None:
    from diffusers import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(threshold=threshold, max_skip_steps=_K, num_inference_steps=steps,
                                                 mag_ratios=ratios))


def _disable_cache(pipe: Any) -> None:
    pipe.transformer.disable_cache()


# ------------------------------------------------------------------------------------------------------ TeaCache
def _teacache_calibrate(pipe: Any, pairs: Sequence[Pair], steps: int, progress: bool) -> list[float]:
    from sencache.teacache import fit_coefficients

    calls = [{"prompt": p.condition, "num_inference_steps": steps, "output_type": "latent",
              "generator": torch.Generator().manual_seed(p.seed)} for p in pairs]
    return fit_coefficients(pipe, calls)


def _teacache_apply(pipe: Any, threshold: float, coefficients: list[float], steps: int) -> None:
    from sencache.teacache import TeaCacheConfig, apply_teacache

    apply_teacache(pipe.transformer, TeaCacheConfig(threshold, coefficients, steps))


def _teacache_remove(pipe: Any) -> None:
    from sencache.teacache import remove_teacache

    remove_teacache(pipe.transformer)


# --------------------------------------------------------------------------------------------- FirstBlockCache
def _fbc_apply(pipe: Any, threshold: float, _calibration: None, _steps: int) -> None:
    from diffusers import FirstBlockCacheConfig

    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))


# The table, in the order of the report's rows and of the calibrations in quality.json.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sencache", "SenCache", (1e-3, 20.0), _sencache_apply, _sencache_remove, _sencache_calibrate, "profile",
           _profile_record),
    Method("sencache_central", "SenCache (central-difference profile)", (1e-3, 20.0), _sencache_apply,
           _sencache_remove, _sencache_central_calibrate, "profile_central", _profile_record,
           in_default_run=False),
    Method("sencache_forecast", "SenCache (first-order residual forecast)", (1e-3, 20.0), _forecast_apply,
           _sencache_remove, in_default_run=False, shares="sencache"),
    Method("sencache_target", "SenCache (target NFE, fixed schedule)", (0.01, 1.0), _target_apply("fixed"),
           _sencache_remove, in_default_run=False, shares="sencache", targeted=True),
    Method("sencache_planned", "SenCache (target NFE, planned eps(t))", (0.01, 1.0), _target_apply("planned"),
           _sencache_remove, in_default_run=False, shares="sencache", targeted=True),
    Method("sencache_planned_forecast", "SenCache (target NFE, planned eps(t), forecast)", (0.01, 1.0),
           _target_apply("planned", "linear"), _sencache_remove, in_default_run=False, shares="sencache",
           targeted=True),
    Method("magcache", "MagCache (diffusers)", (1e-4, 20.0), _magcache_apply, _disable_cache, magcache_ratios,
           "mag_ratios"),
    Method("teacache", "TeaCache (ours, published alg.)", (1e-4, 20.0), _teacache_apply, _teacache_remove,
           _teacache_calibrate, "tea_coefficients"),
    Method("fbc", "FirstBlockCache (diffusers)", (1e-4, 5.0), _fbc_apply, _disable_cache),
    # peers from other libraries (sencache.quality_peers): their settings in its docstrings
    Method("dbcache", "DBCache F1B0 (cache-dit)", peers.DBCACHE_RANGE, peers.dbcache_apply(_K), peers.dbcache_remove,
           in_default_run=False),
    Method("dbcache_ts", "DBCache F1B0 + TaylorSeer O1 (cache-dit)", peers.DBCACHE_RANGE,
           peers.dbcache_apply(_K, taylorseer_order=1), peers.dbcache_remove, in_default_run=False),
    Method("dbcache_mask", "DBCache static step mask (cache-dit)", (0.01, 1.0), peers.dbcache_mask_apply,
           peers.dbcache_remove, in_default_run=False, targeted=True),
    Method("taylorseer", "TaylorSeer lite O1 (diffusers)", (0.01, 1.0), peers.taylorseer_apply(_K), _disable_cache,
           in_default_run=False, targeted=True),
)}


def calibrate_methods(pipe: Any, pairs: Sequence[Pair], steps: int, methods: Sequence[str],
                      progress: bool = True) -> dict[str, Any]:
    """The calibration of each method in ``methods`` that needs one, and of those they share, by name, in table
    order."""
    wanted = set(methods) | {m.shares for m in METHODS.values() if m.name in methods and m.shares is not None}
    return {m.name: m.calibrate(pipe, pairs, steps, progress) for m in METHODS.values()
            if m.name in wanted and m.calibrate is not None}


@contextlib.contextmanager
def applied(pipe: Any, name: str, threshold: float, calibrations: dict[str, Any], steps: int) -> Iterator[None]:
    """``pipe`` with method ``name`` at ``threshold`` for the duration of the block."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    method = METHODS[name]
    method.apply(pipe, threshold, calibrations.get(method.shares or name), steps)
    try:
        yield
    finally:
        method.remove(pipe)
