"""``sencache calibrate PIPELINE_DIR`` (a pipeline saved with ``save_pretrained``, loaded offline) and the plot of
``sencache show PROFILE --plot out.png``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


def read_conditions(prompts: str | None, conditions: str | None) -> dict[str, Any]:
    """``calibrate``'s ``prompts=`` (one per non-empty line of a text file) or ``conditions=`` (a safetensors file
    whose tensors are pipeline arguments, each with the condition index as its first dimension)."""
    if prompts is not None:
        lines = [s.strip() for s in Path(prompts).read_text().splitlines()]
        lines = [s for s in lines if s]
        if not lines:
            raise ValueError(f"{prompts}: no prompts (one per line)")
        return {"prompts": lines}
    from safetensors.torch import load_file

    tensors = load_file(conditions)
    sizes = {t.shape[0] if t.dim() else 0 for t in tensors.values()}
    if not tensors or len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"{conditions}: needs tensors (e.g. prompt_embeds, negative_prompt_embeds) that all have "
                         f"the number of conditions as their first dimension, got "
                         f"{ {k: tuple(v.shape) for k, v in tensors.items()} }")
    n = sizes.pop()
    return {"conditions": [{k: v[i:i + 1] for k, v in tensors.items()} for i in range(n)]}


def _pair(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parser(prog: str = "sencache calibrate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Calibrate a SenCache sensitivity profile for a diffusers "
                                "pipeline saved with save_pretrained (loaded offline, from disk only).")
    p.add_argument("pipeline_dir")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="text file, one prompt per line (needs the pipeline's text encoder)")
    src.add_argument("--conditions", help="safetensors file of pipeline arguments (prompt_embeds, "
                     "negative_prompt_embeds, ...), the condition index first in every tensor")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", required=True, help="where to write the profile (.safetensors)")
    p.add_argument("--estimator", choices=("chained", "central"), default="chained")
    p.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--arg", type=_pair, action="append", default=[], metavar="KEY=VALUE",
                   help="a further pipeline argument (VALUE read as JSON when it parses); repeatable")
    return p


def main(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    if a.samples < 1 or a.steps < 2:
        parser().error("--samples must be >= 1 and --steps >= 2")
    import torch
    from diffusers import DiffusionPipeline

    import sencache

    try:
        source = read_conditions(a.prompts, a.conditions)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"sencache calibrate: {exc}") from None
    # Loaded as saved, then cast the way from_pretrained(torch_dtype=...) does (modules a model keeps in float32
    # stay so), which also works without accelerate installed.
    try:
        # components saved as absent (a pipeline without its text encoder, fed --conditions) are passed as None
        index = json.loads((Path(a.pipeline_dir) / "model_index.json").read_text())
        absent = {k: None for k, v in index.items() if isinstance(v, list) and v and v[0] is None}
        pipe = DiffusionPipeline.from_pretrained(a.pipeline_dir, local_files_only=True, **absent)
    except OSError as exc:
        raise SystemExit(f"sencache calibrate: no pipeline saved with save_pretrained in {a.pipeline_dir} ({exc})") \
            from None
    except ValueError as exc:
        if "low_cpu_mem_usage" not in str(exc):
            raise
        raise SystemExit(f"sencache calibrate: loading {a.pipeline_dir} needs accelerate (the model keeps float32 "
                         f"modules): pip install accelerate ({exc})") from None
    if a.dtype != "float32":
        from sencache.offline_pipelines import cast_weights

        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                cast_weights(module, getattr(torch, a.dtype))
    pipe.to(a.device)
    extra = {k.replace("-", "_"): v for k, v in (("height", a.height), ("width", a.width),
                                                  ("num_frames", a.num_frames), ("guidance_scale", a.guidance_scale))
             if v is not None}
    extra.update(dict(a.arg))
    start = time.perf_counter()
    profile = sencache.calibrate(pipe, **source, num_samples=a.samples, seeds=range(a.seed, a.seed + a.samples),
                                 num_inference_steps=a.steps, estimator=a.estimator, **extra)
    seconds = time.perf_counter() - start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    profile.save(a.out)
    ts = profile.timesteps
    print(f"calibrated {type(pipe).__name__} ({profile.metadata['transformer_class']}): {a.samples} samples x "
          f"{len(profile)} steps, estimator {a.estimator}, {seconds:.1f} s; timesteps {float(ts.max()):g} .. "
          f"{float(ts.min()):g}; median Jx {float(profile.jx.median()):.4g}, Jt {float(profile.jt.median()):.4g}; "
          f"guidance contexts {profile.metadata.get('guidance_contexts')}")
    print(f"profile written to {a.out}")


def plot(profile: Any, path: str) -> None:
    """Jx, Jt and (when recorded) the latent drift over the timestep, with the sample spread, into ``path``."""
    from sencache.plotting import pyplot

    plt = pyplot()
    panels = [("Jx", profile.jx, profile.jx_samples), ("Jt", profile.jt, profile.jt_samples)]
    if profile.drift is not None:
        panels.append(("drift ||x_{k+1} - x_k||", profile.drift, profile.drift_samples))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
    t = profile.timesteps.numpy()
    for ax, (name, mean, samples) in zip(axes, panels, strict=True):
        if samples is not None and samples.shape[0] > 1:
            ax.fill_between(t, samples.min(0).values.numpy(), samples.max(0).values.numpy(), alpha=0.25,
                            label="samples (min-max)")
        ax.plot(t, mean.numpy(), marker=".", label="mean")
        ax.set_xlabel("timestep")
        ax.set_title(name)
        ax.invert_xaxis()  # sampling runs from high to low timesteps
        ax.legend(fontsize=7)
    fig.suptitle(f"{profile.metadata.get('transformer_class', '?')}: {len(profile)} steps, "
                 f"{profile.metadata.get('num_samples', '?')} samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
