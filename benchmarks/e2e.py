"""End-to-end cost of SenCache per denoising step on real-size video DiTs, against the uncached step and diffusers'
own caches: ``python benchmarks/e2e.py --out benchmarks/results/e2e_h100.json`` on a GPU.

The models are the real transformer configurations with random weights, in bf16, called the way their pipelines
call them. Wan 2.1 1.3B at 480p and 81 frames runs CFG as two calls per step. CogVideoX-2B at 480x720 and 49
frames, and LTX-Video at 768x512 and 121 frames, run CFG batched. The VAE and the text encoder are left out: they
run once per video, not per step. Each method runs the denoising loop (Euler steps on host-side sigmas) in its
mode; every figure is the median over repeated loops, with the spread.

- **Overhead at eps=0**: SenCache with a zero tolerance computes every step. Its time per step is compared with
  the uncached step in the same mode: eager against the plain transformer, graph against the plain transformer
  replayed as CUDA graphs. Targets: at most 1% eager and 0.5% graph. diffusers' ``FirstBlockCacheConfig`` and
  ``MagCacheConfig`` hooks are measured the same way at thresholds that never skip.
- **Speedup at a fixed skip pattern**: an unbounded tolerance with ``max_consecutive_skips=3`` gives the pattern
  compute, skip x3, compute, ... Its wall-clock speedup over the uncached loop is reported as a fraction of the
  ideal ``steps / NFE``. Target: at least 97%.
- **Host syncs per step**, counted with ``torch.cuda.set_sync_debug_mode("warn")`` over one loop.

``--render FILE [--readme README.md]`` rewrites the markdown table (and the README block between the
``<!-- e2e-table:start/end -->`` markers) from a results file. ``--smoke`` runs tiny configurations on the CPU to
check this script; its numbers say nothing about GPUs and are not committed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    CogVideoXTransformer3DModel,
    FirstBlockCacheConfig,
    LTXVideoTransformer3DModel,
    MagCacheConfig,
    WanTransformer3DModel,
)
from tqdm.auto import tqdm

import sencache
from sencache.hooks import _hook
from sencache.records import fill_readme, run_stamp, table_markers

# name -> transformer class, configuration, latent shape, text length and width, how CFG is run
MODELS: dict[str, dict[str, Any]] = {
    "wan2.1-1.3b 480p 81f": {
        "cls": WanTransformer3DModel, "cfg": "two calls", "latent": (1, 16, 21, 60, 104), "text": (512, 4096),
        "config": {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
                   "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30,
                   "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
                   "rope_max_seq_len": 1024},
    },
    "cogvideox-2b 480x720 49f": {
        "cls": CogVideoXTransformer3DModel, "cfg": "batched", "latent": (1, 13, 16, 60, 90), "text": (226, 4096),
        "config": {"num_attention_heads": 30, "attention_head_dim": 64, "in_channels": 16, "out_channels": 16,
                   "time_embed_dim": 512, "text_embed_dim": 4096, "num_layers": 30, "sample_width": 90,
                   "sample_height": 60, "sample_frames": 49, "patch_size": 2, "temporal_compression_ratio": 4,
                   "max_text_seq_length": 226, "activation_fn": "gelu-approximate", "timestep_activation_fn": "silu",
                   "norm_elementwise_affine": True, "norm_eps": 1e-5, "spatial_interpolation_scale": 1.875,
                   "temporal_interpolation_scale": 1.0, "use_rotary_positional_embeddings": False},
    },
    "ltx-video 768x512 121f": {
        "cls": LTXVideoTransformer3DModel, "cfg": "batched", "latent": (1, 128, 16, 16, 24), "text": (128, 4096),
        "config": {"in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
                   "num_attention_heads": 32, "attention_head_dim": 64, "cross_attention_dim": 2048,
                   "num_layers": 28, "activation_fn": "gelu-approximate", "qk_norm": "rms_norm_across_heads",
                   "norm_elementwise_affine": False, "norm_eps": 1e-6, "caption_channels": 4096,
                   "attention_bias": True, "attention_out_bias": True},
    },
}
# The same families at toy sizes, for --smoke on the CPU.
SMOKE_MODELS: dict[str, dict[str, Any]] = {
    "wan tiny": {**MODELS["wan2.1-1.3b 480p 81f"], "latent": (1, 16, 2, 8, 8), "text": (8, 32),
                 "config": {**MODELS["wan2.1-1.3b 480p 81f"]["config"], "num_attention_heads": 2,
                            "attention_head_dim": 12, "text_dim": 32, "freq_dim": 16, "ffn_dim": 32, "num_layers": 2,
                            "rope_max_seq_len": 32}},
    "cogvideox tiny": {**MODELS["cogvideox-2b 480x720 49f"], "latent": (1, 2, 4, 8, 8), "text": (8, 16),
                       "config": {**MODELS["cogvideox-2b 480x720 49f"]["config"], "num_attention_heads": 2,
                                  "attention_head_dim": 8, "in_channels": 4, "out_channels": 4, "time_embed_dim": 8,
                                  "text_embed_dim": 16, "num_layers": 2, "sample_width": 8, "sample_height": 8,
                                  "sample_frames": 5, "max_text_seq_length": 8}},
    "ltx tiny": {**MODELS["ltx-video 768x512 121f"], "latent": (1, 8, 2, 4, 4), "text": (8, 16),
                 "config": {**MODELS["ltx-video 768x512 121f"]["config"], "in_channels": 8, "out_channels": 8,
                            "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16,
                            "num_layers": 2, "caption_channels": 16}},
}
SKIP_PATTERN_K = 3


class Model:
    """One transformer with its inputs, and its step as its pipeline runs it (``contexts`` calls per step)."""

    def __init__(self, name: str, spec: dict[str, Any], device: str, dtype: torch.dtype) -> None:
        self.name, self.spec = name, spec
        torch.manual_seed(0)
        with torch.device(device):  # initialised where it runs (a CPU init of 2B parameters takes a minute)
            self.transformer = spec["cls"](**spec["config"]).to(dtype).eval().requires_grad_(False)
        g = torch.Generator().manual_seed(1)
        self.latents = torch.randn(spec["latent"], generator=g).to(device, dtype)
        seq, width = spec["text"]
        self.cond, self.uncond = (torch.randn(1, seq, width, generator=g).to(device, dtype) for _ in range(2))
        self.contexts = ("cond", "uncond") if spec["cfg"] == "two calls" else ("cond_uncond",)

    def kwargs(self, latents: torch.Tensor, t: torch.Tensor, context: str) -> dict[str, Any]:
        """The transformer's keyword arguments for one call of ``context``."""
        cls = self.spec["cls"]
        if context != "cond_uncond":
            text = self.cond if context == "cond" else self.uncond
            return {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text, "return_dict": False}
        text = torch.cat([self.uncond, self.cond])
        if cls is CogVideoXTransformer3DModel:
            return {"hidden_states": torch.cat([latents, latents]), "timestep": t.expand(2),
                    "encoder_hidden_states": text, "return_dict": False}
        _, c, f, h, w = latents.shape  # LTX takes packed tokens [B, F*H*W, C]
        packed = latents.permute(0, 2, 3, 4, 1).reshape(1, f * h * w, c)
        return {"hidden_states": torch.cat([packed, packed]), "timestep": t.expand(2), "encoder_hidden_states": text,
                "encoder_attention_mask": torch.ones(2, text.shape[1], dtype=torch.bool, device=text.device),
                "num_frames": f, "height": h, "width": w, "return_dict": False}

    def combine(self, outputs: list[torch.Tensor], guidance: float = 5.0) -> torch.Tensor:
        """The guided velocity, shaped like the latents."""
        if len(outputs) == 2:
            cond, uncond = outputs
        else:
            uncond, cond = outputs[0].chunk(2)
        v = uncond + guidance * (cond - uncond)
        return v.reshape(self.latents.shape[0], *self.latents.shape[2:], -1).permute(0, 4, 1, 2, 3) \
            if self.spec["cls"] is LTXVideoTransformer3DModel else v


def denoise(model: Model, call: Callable[[dict[str, Any], str], torch.Tensor], steps: int) -> torch.Tensor:
    """The denoising loop with ``call(kwargs, context)`` as the transformer; no host sync of its own."""
    sigmas = [1.0 - i / steps for i in range(steps + 1)]
    timesteps = [torch.full((1,), 1000.0 * s, device=model.latents.device) for s in sigmas[:-1]]
    latents = model.latents
    tr = model.transformer
    for i in range(steps):
        outputs = []
        for context in model.contexts:
            with tr.cache_context(context):
                outputs.append(call(model.kwargs(latents, timesteps[i], context), context))
        latents = latents + (sigmas[i + 1] - sigmas[i]) * model.combine(outputs)
    return latents


def plain_call(model: Model) -> Callable[[dict[str, Any], str], torch.Tensor]:
    return lambda kwargs, context: model.transformer(**kwargs)[0]


def graphed_call(model: Model) -> Callable[[dict[str, Any], str], torch.Tensor]:
    """The uncached transformer replayed as one CUDA graph per context (captured on first use): the baseline of
    graph mode."""
    graphs: dict[str, tuple] = {}

    def call(kwargs: dict[str, Any], context: str) -> torch.Tensor:
        if context not in graphs:
            static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model.transformer(**static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = model.transformer(**static)[0]
            graphs[context] = (graph, static, out)
        graph, static, out = graphs[context]
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                static[k].copy_(v)
        graph.replay()
        return out.clone()

    return call


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_loops(run: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per loop of ``repeats`` timed loops (after one untimed warm-up loop)."""
    run()
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def count_syncs(run: Callable[[], Any], device: torch.device) -> int | None:
    """Host syncs in one call of ``run``, as ``set_sync_debug_mode("warn")`` reports them (None off CUDA)."""
    if device.type != "cuda":
        return None
    _sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _flat_profile(model: Model) -> sencache.SensitivityProfile:
    ts = torch.linspace(1000, 0, 5)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.full_like(ts, 1.0), jt=torch.full_like(ts, 1e-3),
                                       metadata={"transformer_class": type(model.transformer).__name__})


def methods(model: Model, steps: int, graph: bool) -> dict[str, tuple[Callable[[], None], Callable[[], Any]]]:
    """name -> (apply, call factory); ``remove`` undoes every apply."""
    tr = model.transformer

    def sencache_with(eps: float, mode: str) -> Callable[[], None]:
        cfg = sencache.SenCacheConfig(profile=_flat_profile(model), eps=eps, eps_start=eps,
                                      max_consecutive_skips=SKIP_PATTERN_K, num_inference_steps=steps)
        return lambda: sencache.apply_sencache(tr, cfg, mode=mode)

    none = lambda: None  # noqa: E731
    fbc = lambda: tr.enable_cache(FirstBlockCacheConfig(threshold=0.0))  # noqa: E731
    # ratios of 2 make MagCache's accumulated error at least 1 > threshold: it never skips
    mag = lambda: tr.enable_cache(MagCacheConfig(threshold=0.0, num_inference_steps=steps,  # noqa: E731
                                                 mag_ratios=[2.0] * steps))
    out = {"uncached eager": (none, plain_call)}
    if graph:  # graph mode first: the baseline, then SenCache
        out.update({
            "uncached graph": (none, graphed_call),
            "SenCache eps=0 graph": (sencache_with(0.0, "graph"), plain_call),
            "SenCache pattern graph": (sencache_with(1e30, "graph"), plain_call),
        })
    out.update({
        "SenCache eps=0 eager": (sencache_with(0.0, "eager"), plain_call),
        "SenCache pattern eager": (sencache_with(1e30, "eager"), plain_call),
        "FirstBlockCache thr=0 eager": (fbc, plain_call),
        "MagCache thr=0 eager": (mag, plain_call),
    })
    return out


def remove_all(model: Model) -> None:
    sencache.remove_sencache(model.transformer)
    if getattr(model.transformer, "_cache_config", None) is not None:
        model.transformer.disable_cache()


def derive(rows: dict[str, Any], steps: int) -> None:
    """Add each row's overhead against the uncached loop of its mode, and the pattern's speedup against the ideal."""
    for mode in ("eager", "graph"):
        base = rows.get(f"uncached {mode}")
        if base is None:
            continue
        for name, row in rows.items():
            if name.endswith(mode) and not name.startswith("uncached"):
                row["vs_uncached"] = row["s_per_step"] / base["s_per_step"] - 1
            if name.startswith("SenCache pattern") and name.endswith(mode):
                row["speedup"] = base["s_per_step"] / row["s_per_step"]
                row["ideal_speedup"] = steps / row["nfe"]
                row["fraction_of_ideal"] = row["speedup"] / row["ideal_speedup"]


def measure(model: Model, steps: int, repeats: int, graph: bool,
            save: Callable[[dict[str, Any]], None] = lambda rows: None) -> dict[str, Any]:
    """Every method's row for one model; ``save(rows)`` after each method (a cut-off run keeps what it measured)."""
    rows: dict[str, Any] = {}
    for name, (apply, factory) in tqdm(methods(model, steps, graph).items(), desc=model.name, leave=False):
        remove_all(model)
        apply()
        call = factory(model)
        with torch.inference_mode():
            times = time_loops(lambda call=call: denoise(model, call, steps), repeats)
            syncs = count_syncs(lambda call=call: denoise(model, call, steps), model.latents.device)
        row = {"s_per_step": statistics.median(times) / steps, "spread": (min(times) / steps, max(times) / steps),
               "host_syncs_per_step": None if syncs is None else syncs / steps}
        if name.startswith("SenCache"):
            stats = sencache.get_stats(model.transformer)
            row.update(nfe=stats.nfe, steps=steps, mode=_hook(model.transformer).mode)
        rows[name] = row
        remove_all(model)
        derive(rows, steps)
        save(rows)
    return rows


def markdown_table(record: dict[str, Any]) -> str:
    """One row per model and method: time per step, overhead or speedup, host syncs."""
    lines = [f"{record['device']}, {record['dtype']}, {record['steps']} steps per loop, median of "
             f"{record['repeats']} loops; random-weight real-size transformers ({record['date']}, "
             f"`{record['command']}`).", "",
             "| model | method | ms / step | vs uncached (same mode) | speedup / ideal | host syncs / step |",
             "|---|---|---|---|---|---|"]
    for model, rows in record["results"].items():
        for name, r in rows.items():
            vs = f"{r['vs_uncached']:+.2%}" if "vs_uncached" in r else ""
            ideal = (f"{r['speedup']:.2f}x / {r['ideal_speedup']:.2f}x = {r['fraction_of_ideal']:.1%}"
                     if "speedup" in r else "")
            syncs = "n/a" if r["host_syncs_per_step"] is None else f"{r['host_syncs_per_step']:g}"
            lines.append(f"| {model} | {name} | {1000 * r['s_per_step']:.2f} | {vs} | {ideal} | {syncs} |")
    return "\n".join(lines) + "\n"


README_MARKERS = table_markers("e2e")


def _extend(record: dict[str, Any], old: dict[str, Any], path: Path) -> None:
    """Start ``record`` from an earlier run's results (``--append``); its settings must match."""
    differ = [f"{k} {old[k]!r} there, {record[k]!r} now" for k in ("device", "dtype", "steps", "repeats")
              if old[k] != record[k]]
    if differ:
        raise SystemExit(f"--append: {path} was measured with other settings ({'; '.join(differ)}); rerun with "
                         "the same ones or write to another --out")
    record["results"] = old["results"]
    record["command"] = f"{old['command']} + {record['command']}"
    if old["date"] != record["date"]:
        record["date"] = f"{old['date']} + {record['date']}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/e2e.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/e2e.json"), help="results file")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per timed loop")
    parser.add_argument("--repeats", type=int, default=5, help="timed loops per method")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script only")
    parser.add_argument("--render", type=Path, help="only rewrite the table from this results file")
    parser.add_argument("--readme", type=Path, help="also fill the README block between the e2e-table markers")
    parser.add_argument("--append", action="store_true", help="add these models to the results already in --out "
                        "(measured with the same device, dtype, steps and repeats)")
    args = parser.parse_args(argv)
    if args.render is None:
        specs = SMOKE_MODELS if args.smoke else {k: MODELS[k] for k in args.models.split(",")}
        device = "cpu" if args.smoke else "cuda"
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("benchmarks/e2e.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
        dtype = torch.float32 if args.smoke else torch.bfloat16
        record = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
                  "dtype": str(dtype).removeprefix("torch."), "steps": args.steps, "repeats": args.repeats,
                  **run_stamp(),  # versions, date
                  "command": "python benchmarks/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "results": {}}
        if args.append and args.out.is_file():
            _extend(record, json.loads(args.out.read_text()), args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for name, spec in specs.items():
            model = Model(name, spec, device, dtype)
            def save(rows: dict[str, Any], name: str = name) -> None:
                record["results"][name] = rows
                args.out.write_text(json.dumps(record, indent=2) + "\n")

            measure(model, args.steps, args.repeats, graph=device == "cuda", save=save)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
        source = args.out
    else:
        source = args.render
    table = markdown_table(json.loads(source.read_text()))
    source.with_suffix(".md").write_text(table)
    if args.readme is not None:
        fill_readme(args.readme, README_MARKERS, table)
    print(table)


if __name__ == "__main__":
    main()
