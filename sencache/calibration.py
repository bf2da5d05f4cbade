"""``calibrate``: measure Jx(t) and Jt(t) by finite differences along the pipeline's own sampling trajectories.

For each step ``k`` of a real sampling run (the pipeline's scheduler, guidance and conditions), on the
conditional branch, per sample, with L2 norms over the whole output::

    Jx(t_k) = ||f(x_{k+1}, t_k) - f(x_k, t_k)|| / ||x_{k+1} - x_k||      (x_{k+1}: the solver's next latent)
    Jt(t_k) = ||f(x', t_{k+1}) - f(x', t_k)|| / |t_{k+1} - t_k|          (x' = x_{k+1}, or x_k: the estimator)

then the mean over samples. The estimators (``calibration_estimators``): ``"chained"`` (default) reuses the
sampler's next evaluation for Jt, one extra conditional evaluation per step (1.5x the transformer rows of a CFG
generation); ``"central"`` takes both at ``x_k``, two extra per step. Along the way the profile records, per step,
the latent drift ``||x_{k+1} - x_k||`` (mean and spread over samples), the change of the conditional output over the
next steps, the timestep gap and the number of guidance contexts. Noise is drawn with a CPU generator, so the same
seeds give the same profile on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from diffusers.hooks.hooks import ModelHook
from tqdm.auto import tqdm

from sencache import calibration_estimators as estimators
from sencache import plumbing
from sencache.adapters import Adapter, get_adapter
from sencache.hooks import _hook
from sencache.profile import SensitivityProfile, describe_components

_CALIBRATION_HOOK = "sencache_calibration"
_RESERVED = ("callback_on_step_end", "callback_on_step_end_tensor_inputs", "generator", "num_inference_steps",
             "output_type")


class _CalibrationHook(ModelHook):
    """One transformer's hook: hands every call to the shared ``_Calibration`` (Wan 2.2 has two experts, each
    hooked, one calibration) and evaluates the extra points on this transformer."""

    _is_stateful = True  # so that diffusers hands it the cache context

    def __init__(self, adapter: Adapter, calibration: _Calibration) -> None:
        super().__init__()
        self.adapter = adapter
        self.calibration = calibration
        self.state_manager = plumbing.context_manager()

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self.args = plumbing.Args(type(module).forward, self.adapter.latent_arg, self.adapter.timestep_arg)
        return module

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module

    def eval(self, args: tuple, kwargs: dict, latent: torch.Tensor | None = None, t: torch.Tensor | None = None):
        """The conditional output of this transformer on a call's arguments with ``latent`` and/or ``t`` replaced
        (whole-batch values). Under batched CFG only the conditional half is evaluated: every argument whose first
        dimension is the batch is cut to its second half."""
        values = {}
        if latent is not None:
            values[self.adapter.latent_arg] = latent
        if t is not None:
            values[self.adapter.timestep_arg] = t
        args, kwargs = self.args.replace(args, kwargs, **values)
        if self.calibration.halves:
            n = self.args.get(args, kwargs, self.adapter.latent_arg).shape[0]
            cut = self.calibration.cond

            def half(v: Any) -> Any:
                return cut(v) if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n else v

            args, kwargs = tuple(half(v) for v in args), {k: half(v) for k, v in kwargs.items()}
            return plumbing.output_tensor(self.fn_ref.original_forward(*args, **kwargs))
        return self.calibration.cond(plumbing.output_tensor(self.fn_ref.original_forward(*args, **kwargs)))

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        ctx = self.state_manager.current()
        out = self.fn_ref.original_forward(*args, **kwargs)
        self.calibration.on_call(self, ctx[0] if ctx is not None else "default", args, kwargs, out)
        return out


class _Calibration:
    """Records f(x_k, t_k) on the deciding context and hands it to the run's estimator, in the transformer's timestep
    units (the schedule times the adapter's ``timestep_scale``); keeps the per-sample tables of all runs."""

    def __init__(self, adapter: Adapter, pipe: Any, estimator: str) -> None:
        if estimator not in estimators.ESTIMATORS:
            raise ValueError(f"estimator must be one of {estimators.ESTIMATORS}, got {estimator!r}")
        self.adapter = adapter
        self.pipe = pipe
        self.estimator = estimator
        self.jx: list[torch.Tensor] = []
        self.jt: list[torch.Tensor] = []
        self.drift: list[torch.Tensor] = []
        self.change: list[torch.Tensor] = []
        self.timesteps: list[float] = []
        self.contexts = 0
        self.begin_run()

    def begin_run(self) -> None:
        self.leader: str | None = None
        self.schedule: list[float] | None = None
        self.step = -1
        self.halves = False
        self.names: set[str] = set()
        self.run: estimators.Estimator | None = None

    def cond(self, y: torch.Tensor) -> torch.Tensor:
        """The conditional branch of a transformer input or output (the second half under batched CFG)."""
        return y[y.shape[0] // 2:] if self.halves else y

    def on_call(self, hook: _CalibrationHook, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        self.names.add(name)
        if self.leader is None:
            self.leader = name
        if name != self.leader:
            return
        self.step += 1
        x = hook.args.get(args, kwargs, self.adapter.latent_arg)
        if self.schedule is None:  # first step of a run
            scale = self.adapter.timestep_scale
            self.schedule = [float(v) * scale for v in self.pipe.scheduler.timesteps]
            h = x.shape[0] // 2
            # batched CFG feeds [uncond, cond] halves of one latent: identical halves mean guidance is on
            self.halves = self.adapter.batched_cfg and x.shape[0] % 2 == 0 and torch.equal(x[:h], x[h:])
            self.run = estimators.make(self.estimator, self)
            self.numel = math.prod(x.shape[1:])  # per sample, as the decision's sqrt(numel) counts it
        if self.step >= len(self.schedule):
            raise RuntimeError(f"calibration saw more transformer calls than the {len(self.schedule)} steps of the "
                               "schedule; the pipeline may not be supported")
        f = self.cond(plumbing.output_tensor(out)).detach().clone()
        self.run.on_point(self.step, estimators.Point(hook, args, kwargs, x.detach().clone(), f))

    def on_step_end(self, latents: torch.Tensor) -> None:
        """The latent after the step just taken (``x_{k+1}``)."""
        if self.run is not None:
            self.run.on_latents(self.step, latents)

    def end_run(self) -> None:
        run = self.run
        if run is None or any(v is None for v in (*run.jx, *run.jt)):
            raise RuntimeError(f"calibration saw {self.step + 1} transformer calls for a schedule of "
                               f"{len(self.schedule or ())} steps; the pipeline may not be supported")
        if self.timesteps and self.timesteps != self.schedule:
            raise ValueError("calibration runs used different schedules; use the same pipeline arguments for all")
        self.timesteps = self.schedule
        self.contexts = max(self.contexts, len(self.names) * (2 if self.halves else 1))
        self.jx.append(torch.stack(run.jx, dim=1).cpu())  # [samples of this run, steps]
        self.jt.append(torch.stack(run.jt, dim=1).cpu())
        self.drift.append(torch.stack(run.drift, dim=1).cpu())
        self.change.append(torch.stack(run.change, dim=1).cpu())  # [samples, steps, window]


def calibrate(
    pipe: Any,
    prompts: Sequence[str] | None = None,
    *,
    conditions: Sequence[dict] | None = None,
    num_samples: int = 8,
    seeds: Sequence[int] | None = None,
    num_inference_steps: int = 50,
    progress: bool = True,
    estimator: str = "chained",
    **pipe_kwargs: Any,
) -> SensitivityProfile:
    """Calibrate the sensitivities of ``pipe``'s transformer along its own sampling trajectories.

    Args:
        pipe: a Wan, CogVideoX or LTX-Video diffusers pipeline (SenCache must not be applied while calibrating).
        prompts: text prompts, cycled over the samples (needs the pipeline's text encoder).
        conditions: alternatively, one dict of pipeline arguments per condition (e.g. ``prompt_embeds`` and
            ``negative_prompt_embeds``), cycled over the samples.
        num_samples: number of sampling runs (the paper finds 8 enough).
        seeds: one seed per sample (default ``0 .. num_samples - 1``).
        num_inference_steps: steps of the schedule to calibrate (the profile serves other step counts too).
        progress: show a progress bar.
        estimator: ``"chained"`` (Jt taken at ``x_{k+1}`` from the sampler's next evaluation: one extra conditional
            evaluation per step) or ``"central"`` (Jt at ``x_k``: two); see ``sencache.calibration_estimators``.
        **pipe_kwargs: further pipeline arguments shared by all samples (height, width, num_frames,
            guidance_scale, ...). With neither ``prompts`` nor ``conditions`` they must hold the condition.

    Returns:
        The ``SensitivityProfile`` with per-sample values in ``jx_samples`` / ``jt_samples`` / ``drift_samples``, the
        output change ``change_samples[s, k, j - 1] = ||f(x_{k+j}, t_{k+j}) - f(x_k, t_k)||`` (conditional branch,
        ``j <= calibration_estimators.CHANGE_WINDOW``, 0 past the last step),
        the drift's mean and spread (``drift``, ``drift_std``), the timestep gaps (``dt``) and, in the metadata,
        ``guidance_contexts``, ``estimator`` and ``latent_numel`` (elements per sample of the transformer's latent,
        which ``sencache.planner`` needs). The noise comes from a CPU generator per seed, so the same seeds
        give the same profile on every device (up to float error).
    """
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module):
        raise ValueError(f"calibrate needs a diffusers pipeline with a transformer, got {type(pipe).__name__}")
    transformers = plumbing.transformers(pipe)  # Wan 2.2: both experts, each calibrated on the steps it takes
    adapters = [get_adapter(tr) for tr in transformers]
    for tr in transformers:
        if _hook(tr) is not None:
            raise ValueError("SenCache is applied to this pipeline; call sencache.remove_sencache(pipe) before "
                             "calibrating")
        if getattr(tr, "_cache_config", None) is not None:
            raise ValueError("a diffusers cache is enabled on the transformer; call transformer.disable_cache() first")
    bad = [k for k in _RESERVED if k in pipe_kwargs]
    if bad:
        raise ValueError(f"calibrate sets {bad} itself; pass seeds=... and num_inference_steps=... instead")
    if num_samples < 1 or num_inference_steps < 2:
        raise ValueError("calibrate needs num_samples >= 1 and num_inference_steps >= 2")
    if prompts is not None and conditions is not None:
        raise ValueError("give either prompts or conditions, not both")
    if prompts is not None:
        conditions = [{"prompt": p} for p in prompts]
    elif conditions is None:
        if not any(k in pipe_kwargs for k in ("prompt", "prompt_embeds")):
            raise ValueError("calibrate needs conditions: prompts=[...], conditions=[{...}], or prompt/prompt_embeds")
        conditions = [{}]
    if len(conditions) == 0:
        raise ValueError("conditions must not be empty")
    seeds = list(range(num_samples)) if seeds is None else list(seeds)
    if len(seeds) != num_samples:
        raise ValueError(f"got {len(seeds)} seeds for num_samples={num_samples}")

    hook = _Calibration(adapters[0], pipe, estimator)
    registries = [plumbing.registry(tr) for tr in transformers]
    for registry, adapter in zip(registries, adapters, strict=True):
        registry.register_hook(_CalibrationHook(adapter, hook), _CALIBRATION_HOOK)
    old_bar = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    bar = tqdm(total=num_samples * num_inference_steps, desc="SenCache calibration", disable=not progress)

    def on_step_end(_pipe: Any, _i: int, _t: Any, tensors: dict) -> dict:
        hook.on_step_end(tensors["latents"])
        bar.update(1)
        return {}

    try:
        with torch.no_grad():
            for i, seed in enumerate(seeds):
                hook.begin_run()
                generator = torch.Generator().manual_seed(int(seed))  # on the CPU: the same noise on every device
                pipe(**{**pipe_kwargs, **conditions[i % len(conditions)]}, num_inference_steps=num_inference_steps,
                     generator=generator, output_type="latent", callback_on_step_end=on_step_end)
                hook.end_run()
    finally:
        bar.close()
        for registry in registries:
            registry.remove_hook(_CALIBRATION_HOOK, recurse=False)
        pipe._progress_bar_config = old_bar

    jx_samples, jt_samples, drift = torch.cat(hook.jx), torch.cat(hook.jt), torch.cat(hook.drift)
    ts = hook.timesteps
    dt = [abs(ts[k + 1] - ts[k]) for k in range(len(ts) - 1)]
    dt.append(dt[-1])  # the last step: the gap before it (its successor lies outside the schedule)
    metadata = {
        **describe_components(transformer, getattr(pipe, "scheduler", None)),
        "pipeline_class": type(pipe).__name__,
        "num_inference_steps": len(hook.timesteps),
        "num_samples": int(jx_samples.shape[0]),
        "seeds": seeds,
        "dtype": str(next(transformer.parameters()).dtype).replace("torch.", ""),
        "guidance_scale": pipe_kwargs.get("guidance_scale"),
        "guidance_contexts": hook.contexts,
        "latent_numel": hook.numel,
        "estimator": estimator,
        "sencache_version": _version(),
    }
    return SensitivityProfile(timesteps=torch.tensor(hook.timesteps), jx=jx_samples.mean(0), jt=jt_samples.mean(0),
                              metadata=metadata, jx_samples=jx_samples, jt_samples=jt_samples,
                              drift=drift.mean(0), drift_std=drift.std(0, correction=0), dt=torch.tensor(dt),
                              drift_samples=drift, change_samples=torch.cat(hook.change))


def _version() -> str:
    from sencache import __version__

    return __version__
