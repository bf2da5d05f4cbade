"""Quality at matched NFE: SenCache against MagCache, TeaCache and FirstBlockCache on the reference model.

Run it with ``python benchmarks/quality.py`` or ``sencache quality`` (``--help`` for the options). For each method
it calibrates on tuning pairs (seed x condition), searches the method's threshold so that the mean NFE on the tuning
pairs hits each budget (a fraction of the steps), then runs the held-out pairs and compares every final video with
the uncached one of the same seed and condition (PSNR, SSIM, relative L2). NFE counts block-stack evaluations per
denoising call (one per step when nothing is skipped), from the last block's feed-forward calls, so every method is
counted the same way. Writes ``quality.json``, ``quality.md`` and plots into the output directory.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sencache.config import SenCacheConfig

__all__ = ["EPS_START_RATIO", "METHODS", "Pair", "QualitySettings", "psnr", "rel_l2", "run_quality", "ssim"]

METHODS: tuple[str, ...] = ("sencache", "magcache", "teacache", "fbc")
LABELS = {"sencache": "SenCache", "magcache": "MagCache (diffusers)", "teacache": "TeaCache (ours, published alg.)",
          "fbc": "FirstBlockCache (diffusers)"}
# Threshold search range per method (log-space bisection inside it).
_RANGES = {"sencache": (1e-3, 20.0), "magcache": (1e-4, 20.0), "teacache": (1e-4, 20.0), "fbc": (1e-4, 5.0)}
_K = 3  # consecutive-skip cap of SenCache and MagCache (the paper's setting)
# SenCacheConfig's default eps_start / eps, kept along a sweep of eps (the quality search, the demo)
EPS_START_RATIO = SenCacheConfig.eps_start / SenCacheConfig.eps


# ----------------------------------------------------------------------------------------------------- metrics
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of ``a`` against ``b`` for values in [0, 1] (inf when identical)."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float(torch.linalg.vector_norm(a.double() - b.double()) / torch.linalg.vector_norm(b.double()))


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11 / 1.5, K1 = 0.01, K2 = 0.03, data range 1) of videos
    ``[F, C, H, W]`` in [0, 1], over frames, channels and valid window positions."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim needs two [F, C, H, W] videos of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    window = min(window, a.shape[-1], a.shape[-2])
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()
    a, b = a.double(), b.double()

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


# ----------------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Pair:
    """One generation: a condition of the reference dataset and the seed of the sampler's noise."""

    condition: str
    seed: int


def make_pairs(n: int, seed_base: int, stride: int = 7, offset: int = 0) -> list[Pair]:
    """``n`` pairs walking the 48 conditions with ``stride`` (coprime to 48, so every condition before a repeat)."""
    from sencache.reference.data import CONDITIONS

    return [Pair(CONDITIONS[(offset + i * stride) % len(CONDITIONS)], seed_base + i) for i in range(n)]


@dataclass
class Generation:
    video: torch.Tensor  # [F, 3, H, W] in [0, 1]
    nfe: float  # block-stack evaluations per denoising call
    timeline: list[float]  # per step: fraction of the step's calls that evaluated the stack
    wall_s: float


class _StackCounter:
    """Counts evaluations of the block stack: calls of the last block's feed-forward (skipped stacks never run it)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.count = 0
        self.calls = 0
        target = transformer.blocks[-1].ffn
        self._handles = [target.register_forward_pre_hook(self._tick),
                         transformer.register_forward_pre_hook(self._call)]

    def _tick(self, *_: Any) -> None:
        self.count += 1

    def _call(self, *_: Any) -> None:
        self.calls += 1

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def generate(pipe: Any, pair: Pair, steps: int, on_output: Callable[[torch.Tensor], None] | None = None) -> Generation:
    """One uncached-or-cached run of ``pipe`` on ``pair``; the caller applies the cache."""
    counter = _StackCounter(pipe.transformer)
    timeline: list[float] = []
    marks = {"count": 0, "calls": 0}

    def on_step_end(_p: Any, _i: int, _t: Any, tensors: dict) -> dict:
        calls = counter.calls - marks["calls"]
        timeline.append((counter.count - marks["count"]) / max(calls, 1))
        marks.update(count=counter.count, calls=counter.calls)
        return {}

    handle = None
    if on_output is not None:
        handle = pipe.transformer.register_forward_hook(lambda m, a, out: on_output(out[0] if isinstance(out, tuple)
                                                                                    else out.sample))
    try:
        gen = torch.Generator(device="cpu").manual_seed(pair.seed)
        start = time.perf_counter()
        with torch.no_grad():
            frames = pipe(pair.condition, num_inference_steps=steps, generator=gen, output_type="pt",
                          callback_on_step_end=on_step_end).frames[0]
        wall = time.perf_counter() - start
    finally:
        counter.close()
        if handle is not None:
            handle.remove()
    calls_per_step = counter.calls / max(len(timeline), 1)
    return Generation(frames.float().cpu(), counter.count / calls_per_step, timeline, wall)


# ----------------------------------------------------------------------------------------------------- methods
def calibrate_methods(pipe: Any, pairs: Sequence[Pair], steps: int, methods: Sequence[str],
                      progress: bool = True) -> dict[str, Any]:
    """Each method's calibration on ``pairs``: SenCache's profile, MagCache's ratios (its own calibrate mode,
    averaged over pairs and CFG contexts), TeaCache's polynomial; FirstBlockCache needs none."""
    cal: dict[str, Any] = {}
    if "sencache" in methods:
        import sencache

        cal["profile"] = sencache.calibrate(pipe, prompts=[p.condition for p in pairs], seeds=[p.seed for p in pairs],
                                            num_samples=len(pairs), num_inference_steps=steps, progress=progress)
    if "magcache" in methods:
        cal["mag_ratios"] = _magcache_ratios(pipe, pairs, steps)
    if "teacache" in methods:
        from sencache.teacache import fit_coefficients

        calls = [{"prompt": p.condition, "num_inference_steps": steps, "output_type": "latent",
                  "generator": torch.Generator().manual_seed(p.seed)} for p in pairs]
        cal["tea_coefficients"] = fit_coefficients(pipe, calls)
    return cal


def _magcache_ratios(pipe: Any, pairs: Sequence[Pair], steps: int) -> list[float]:
    """Run diffusers' MagCache calibrate mode, which prints the ratios of every context at the end of each call."""
    from diffusers import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    runs: list[list[float]] = []
    try:
        for p in pairs:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), torch.no_grad():
                pipe(p.condition, num_inference_steps=steps, generator=torch.Generator().manual_seed(p.seed),
                     output_type="latent")
            lists = [ast.literal_eval(s) for s in buf.getvalue().splitlines() if s.startswith("[") and s.endswith("]")]
            runs.extend(r for r in lists if len(r) == steps)
    finally:
        pipe.transformer.disable_cache()
    if not runs:
        raise RuntimeError("MagCache's calibrate mode printed no ratios; the diffusers MagCache hook may have changed")
    return torch.tensor(runs, dtype=torch.float64).mean(0).tolist()


def apply_method(pipe: Any, method: str, threshold: float, cal: dict[str, Any], steps: int) -> None:
    """Enable ``method`` at ``threshold`` on ``pipe`` (undo with :func:`remove_method`)."""
    if method == "sencache":
        import sencache

        cfg = sencache.SenCacheConfig(profile=cal["profile"], eps=threshold, eps_start=threshold * EPS_START_RATIO,
                                      max_consecutive_skips=_K)
        sencache.apply_sencache(pipe, cfg)
    elif method == "magcache":
        from diffusers import MagCacheConfig

        pipe.transformer.enable_cache(MagCacheConfig(threshold=threshold, max_skip_steps=_K, num_inference_steps=steps,
                                                     mag_ratios=cal["mag_ratios"]))
    elif method == "teacache":
        from sencache.teacache import TeaCacheConfig, apply_teacache

        apply_teacache(pipe.transformer, TeaCacheConfig(threshold, cal["tea_coefficients"], steps))
    elif method == "fbc":
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def remove_method(pipe: Any, method: str) -> None:
    """Undo :func:`apply_method`."""
    if method == "sencache":
        import sencache

        sencache.remove_sencache(pipe)
    elif method == "teacache":
        from sencache.teacache import remove_teacache

        remove_teacache(pipe.transformer)
    else:
        pipe.transformer.disable_cache()


@contextlib.contextmanager
def method_applied(pipe: Any, method: str, threshold: float, cal: dict[str, Any], steps: int):
    apply_method(pipe, method, threshold, cal, steps)
    try:
        yield
    finally:
        remove_method(pipe, method)


# ----------------------------------------------------------------------------------------------------- harness
@dataclass
class QualitySettings:
    """What one quality run does (the defaults are the committed full run)."""

    steps: int = 50
    budgets: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3)
    methods: tuple[str, ...] = METHODS
    eval_pairs: int = 16
    tune_pairs: int = 3
    calib_pairs: int = 8
    search_iters: int = 6
    checkpoint: str | None = None
    device: str = "cpu"


def _search(nfe_of: Callable[[float], float], lo: float, hi: float, target: float, iters: int,
            tried: dict[float, float]) -> float:
    """Log-space bisection for the threshold whose NFE fraction is closest to ``target`` (NFE falls as it grows)."""
    for t in (lo, hi):
        if t not in tried:
            tried[t] = nfe_of(t)
    a, b = math.log(lo), math.log(hi)
    for _ in range(iters):
        mid = math.exp((a + b) / 2)
        if mid not in tried:
            tried[mid] = nfe_of(mid)
        if tried[mid] > target:
            a = math.log(mid)
        else:
            b = math.log(mid)
    return min(tried, key=lambda t: (abs(tried[t] - target), -t))


def run_quality(settings: QualitySettings, out_dir: str | Path, progress: bool = True,
                command: str | None = None) -> dict:
    """Run the benchmark; write ``quality.json``, ``quality.md`` and the plots into ``out_dir``; return the record.
    ``command``: the command line that ran it, kept in the record."""
    from sencache.reference.model import load_reference_pipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = settings.steps
    pipe = load_reference_pipeline(settings.checkpoint, device=settings.device)
    evals = make_pairs(settings.eval_pairs, seed_base=20_000)
    tunes = make_pairs(settings.tune_pairs, seed_base=30_000, offset=3)
    calibs = make_pairs(settings.calib_pairs, seed_base=40_000, offset=5)
    bar = tqdm(desc="quality runs", disable=not progress, unit="video")

    def run(pair: Pair, **kw: Any) -> Generation:
        g = generate(pipe, pair, steps, **kw)
        bar.update(1)
        return g

    # Uncached references, with the consecutive-step change of the conditional output.
    refs, mae = [], torch.zeros(steps - 1, dtype=torch.float64)
    for pair in evals:
        outs: list[torch.Tensor] = []
        refs.append(run(pair, on_output=lambda o, outs=outs: outs.append(o.detach().float().cpu())))
        cond = outs[0::2] if len(outs) == 2 * steps else outs
        mae += torch.tensor([float((cond[k] - cond[k - 1]).abs().mean()) for k in range(1, steps)])
    mae /= len(evals)
    cal = calibrate_methods(pipe, calibs, steps, settings.methods, progress=progress)

    results: list[dict] = []
    searches: dict[str, dict[float, float]] = {}
    for method in settings.methods:
        tried: dict[float, float] = {}
        searches[method] = tried

        def nfe_of(threshold: float, method: str = method) -> float:
            with method_applied(pipe, method, threshold, cal, steps):
                return sum(run(p).nfe for p in tunes) / (len(tunes) * steps)

        for budget in settings.budgets:
            thr = _search(nfe_of, *_RANGES[method], budget, settings.search_iters, tried)
            with method_applied(pipe, method, thr, cal, steps):
                gens = [run(p) for p in evals]
            results.append(_summarise(method, budget, thr, gens, refs, steps))
    bar.close()

    record = {
        "settings": asdict(settings),
        "device": (torch.cuda.get_device_name(settings.device) if settings.device.startswith("cuda")
                   else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
        "uncached": {"wall_s_mean": sum(r.wall_s for r in refs) / len(refs), "nfe": steps},
        "eval_pairs": [asdict(p) for p in evals],
        "results": results,
        "threshold_search": {m: sorted(([t, n] for t, n in s.items()), key=lambda x: x[0]) for m, s in
                             searches.items()},
        "consecutive_output_mae": mae.tolist(),
        "profile": ({"timesteps": cal["profile"].timesteps.tolist(), "jx": cal["profile"].jx.tolist(),
                     "jt": cal["profile"].jt.tolist()} if "profile" in cal else None),
        "mag_ratios": cal.get("mag_ratios"),
        "tea_coefficients": cal.get("tea_coefficients"),
    }
    (out / "quality.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "quality.md").write_text(markdown_table(record))
    plot_all(record, out)
    return record


def _summarise(method: str, budget: float, threshold: float, gens: list[Generation], refs: list[Generation],
               steps: int) -> dict:
    def stats(values: list[float]) -> dict:
        t = torch.tensor(values, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}

    pairs = list(zip(gens, refs, strict=True))
    per_pair = {name: [fn(g.video, r.video) for g, r in pairs] for name, fn in
                (("psnr", psnr), ("ssim", ssim), ("rel_l2", rel_l2))}
    return {
        "method": method, "budget": budget, "threshold": threshold,
        "nfe": stats([g.nfe for g in gens]), "nfe_fraction": stats([g.nfe / steps for g in gens]),
        **{name: stats(values) for name, values in per_pair.items()},
        "wall_s": stats([g.wall_s for g in gens]),
        "per_pair": per_pair,  # in the order of the record's eval_pairs: methods can be compared pair by pair
        "timelines": [g.timeline for g in gens],
    }


def library_versions() -> dict[str, str]:
    """torch, diffusers and Python versions, for the records of benchmark and training runs."""
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def markdown_table(record: dict) -> str:
    """The results as a markdown table, one row per method and budget."""
    s = record["settings"]
    lines = [f"Reference model, {s['steps']} steps, {len(record['eval_pairs'])} held-out seed x condition pairs; "
             f"quality of the final video against the uncached one (mean ± std). Uncached: {s['steps']} NFE, "
             f"{record['uncached']['wall_s_mean']:.2f} s per video on {record['device']} "
             f"({record['torch_threads']} threads)"
             + (f", {record['date']}, `{record['command']}`." if record.get("command") else "."), "",
             "| budget | method | threshold | NFE | PSNR (dB) | SSIM | rel. L2 | wall (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(record["results"], key=lambda r: (-r["budget"], METHODS.index(r["method"]))):
        lines.append(
            f"| {r['budget']:.0%} | {LABELS[r['method']]} | {r['threshold']:.4g} | {r['nfe']['mean']:.1f} ± "
            f"{r['nfe']['std']:.1f} | {r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f} | {r['ssim']['mean']:.4f} ± "
            f"{r['ssim']['std']:.4f} | {r['rel_l2']['mean']:.4f} ± {r['rel_l2']['std']:.4f} | "
            f"{r['wall_s']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_all(record: dict, out: Path) -> None:
    """quality_vs_nfe.png, sensitivity_profile.png, output_change.png, timelines.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = record["settings"]["steps"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method in record["settings"]["methods"]:
        rows = sorted((r for r in record["results"] if r["method"] == method), key=lambda r: r["nfe"]["mean"])
        x = [r["nfe"]["mean"] for r in rows]
        for ax, key in zip(axes, ("psnr", "ssim", "rel_l2"), strict=True):
            ax.errorbar(x, [r[key]["mean"] for r in rows], yerr=[r[key]["std"] for r in rows], marker="o",
                        capsize=3, label=LABELS[method])
    for ax, name in zip(axes, ("PSNR (dB) ↑", "SSIM ↑", "relative L2 ↓"), strict=True):
        ax.set(xlabel=f"NFE (of {steps})", ylabel=name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Quality against the uncached output at matched NFE (reference model)")
    fig.tight_layout()
    fig.savefig(out / "quality_vs_nfe.png", dpi=110)
    plt.close(fig)

    if record["profile"] is not None:
        p = record["profile"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(p["timesteps"], p["jx"], marker=".", label="Jx (per unit of ||Δx||)")
        ax2 = ax.twinx()
        ax2.plot(p["timesteps"], p["jt"], marker=".", color="C1", label="Jt (per unit of Δt)")
        ax.set(xlabel="timestep t (1000 = noise)", ylabel="Jx", title="SenCache sensitivities of the reference model")
        ax2.set_ylabel("Jt")
        ax.invert_xaxis()
        fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.88), fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sensitivity_profile.png", dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, steps), record["consecutive_output_mae"], marker=".")
    ax.set(xlabel="step", ylabel="mean |v_k - v_(k-1)|", yscale="log",
           title="Consecutive-step change of the transformer output (uncached)")
    fig.tight_layout()
    fig.savefig(out / "output_change.png", dpi=110)
    plt.close(fig)

    methods = record["settings"]["methods"]
    budget = min(record["settings"]["budgets"], key=lambda b: abs(b - 0.5))
    fig, axes = plt.subplots(len(methods), 1, figsize=(8, 1.3 + 1.1 * len(methods)), squeeze=False)
    for ax, method in zip(axes[:, 0], methods, strict=True):
        r = next(r for r in record["results"] if r["method"] == method and r["budget"] == budget)
        ax.imshow(r["timelines"], aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set(ylabel="sample", title=f"{LABELS[method]}: NFE {r['nfe']['mean']:.1f} (black: computed)")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "timelines.png", dpi=110)
    plt.close(fig)


README_MARKERS = ("<!-- quality-table:start -->", "<!-- quality-table:end -->")


def render(out_dir: str | Path, readme: str | Path | None = None) -> str:
    """Rewrite ``quality.md`` and the plots from ``out_dir/quality.json``; put the table between the
    :data:`README_MARKERS` of ``readme`` when given. Returns the table."""
    out = Path(out_dir)
    record = json.loads((out / "quality.json").read_text())
    table = markdown_table(record)
    (out / "quality.md").write_text(table)
    plot_all(record, out)
    if readme is not None:
        fill_readme(readme, README_MARKERS, table)
    return table


def fill_readme(readme: str | Path, markers: tuple[str, str], table: str) -> None:
    """Replace what lies between the two ``markers`` lines of ``readme`` with ``table``."""
    text = Path(readme).read_text()
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    Path(readme).write_text(head + start + "\n" + table + rest[rest.index(end):])


def main(argv: list[str] | None = None) -> None:
    """``sencache quality`` / ``python benchmarks/quality.py``."""
    d = QualitySettings()
    parser = argparse.ArgumentParser(prog="sencache quality", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/quality", help="output directory")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(d.budgets), help="NFE fractions to match")
    parser.add_argument("--methods", nargs="+", default=list(d.methods), choices=METHODS)
    parser.add_argument("--eval-pairs", type=int, default=d.eval_pairs, help="held-out seed x condition pairs")
    parser.add_argument("--tune-pairs", type=int, default=d.tune_pairs, help="pairs used to search thresholds")
    parser.add_argument("--calib-pairs", type=int, default=d.calib_pairs, help="pairs used to calibrate methods")
    parser.add_argument("--search-iters", type=int, default=d.search_iters)
    parser.add_argument("--checkpoint", default=None, help="reference checkpoint directory (default: shipped)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the model runs (default: cuda when available)")
    parser.add_argument("--render-only", action="store_true",
                        help="do not run: redraw the table and plots from OUT/quality.json")
    parser.add_argument("--readme", default=None, help="also write the table into this README's quality block")
    args = parser.parse_args(argv)
    if args.render_only:
        print(render(args.out, args.readme))
        return
    if min(args.eval_pairs, args.tune_pairs, args.calib_pairs) < 1 or args.steps < 4:
        parser.error("pairs must be >= 1 and --steps >= 4")
    if any(not 0 < b < 1 for b in args.budgets):
        parser.error("--budgets are fractions of the steps, in (0, 1)")
    settings = QualitySettings(steps=args.steps, budgets=tuple(args.budgets), methods=tuple(args.methods),
                               eval_pairs=args.eval_pairs, tune_pairs=args.tune_pairs, calib_pairs=args.calib_pairs,
                               search_iters=args.search_iters, checkpoint=args.checkpoint, device=args.device)
    run_quality(settings, args.out, command="python benchmarks/quality.py " + " ".join(
        sys.argv[1:] if argv is None else argv))
    print(render(args.out, args.readme))
    print(f"wrote {args.out}/quality.json, quality.md and plots")


if __name__ == "__main__":
    main()
