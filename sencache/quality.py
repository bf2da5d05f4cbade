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
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sencache.metrics import psnr, rel_l2, ssim
from sencache.plotting import missing_matplotlib
from sencache.quality_methods import METHODS, Pair, applied, calibrate_methods
from sencache.quality_report import markdown_table, plot_all, render
from sencache.records import run_stamp

__all__ = ["Pair", "QualitySettings", "generate", "main", "make_pairs", "run_quality"]


# ----------------------------------------------------------------------------------------------------- runs
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


# ----------------------------------------------------------------------------------------------------- harness
@dataclass
class QualitySettings:
    """What one quality run does (the defaults are the committed full run)."""

    steps: int = 50
    budgets: tuple[float, ...] = (0.6, 0.5, 0.4, 0.3)
    methods: tuple[str, ...] = tuple(m.name for m in METHODS.values() if m.in_default_run)
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
            with applied(pipe, method, threshold, cal, steps):
                return sum(run(p).nfe for p in tunes) / (len(tunes) * steps)

        for budget in settings.budgets:
            thr = budget if METHODS[method].targeted else _search(nfe_of, *METHODS[method].search_range, budget,
                                                                  settings.search_iters, tried)
            with applied(pipe, method, thr, cal, steps):
                gens = [run(p) for p in evals]
            results.append(_summarise(method, budget, thr, gens, refs, steps))
    bar.close()

    record = {
        "settings": asdict(settings),
        "device": (torch.cuda.get_device_name(settings.device) if settings.device.startswith("cuda")
                   else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        **run_stamp(),  # versions, date
        "command": command,
        "uncached": {"wall_s_mean": sum(r.wall_s for r in refs) / len(refs), "nfe": steps,
                     "digest": _digest(refs)},
        "eval_pairs": [asdict(p) for p in evals],
        "results": results,
        "threshold_search": {m: sorted(([t, n] for t, n in s.items()), key=lambda x: x[0]) for m, s in
                             searches.items()},
        "consecutive_output_mae": mae.tolist(),
        # each method's calibration ("profile", "mag_ratios", "tea_coefficients"; None when it did not run)
        **{m.record_key: m.to_record(cal[m.name]) if m.name in cal else None for m in METHODS.values()
           if m.record_key is not None},
    }
    (out / "quality.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "quality.md").write_text(markdown_table(record))
    plot_all(record, out)
    return record


def _digest(refs: list[Generation]) -> str:
    """A hash of the uncached videos' bytes: runs with equal digests compared against the same references."""
    h = hashlib.sha256()
    for r in refs:
        h.update(r.video.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def merge_records(parts: list[dict], replace: bool = False) -> dict:
    """One record from runs against the same uncached videos (equal digests, pairs, steps): their results side by
    side, as if one run had run them all (ValueError when they are not comparable). A method may come from several
    runs at other budgets (more points of its curve); a method at a budget in more than one run is an error, unless
    ``replace``: then the last run that has it gives its rows at those budgets and its threshold search (a rerun)."""
    first = parts[0]
    for p in parts[1:]:
        for what, a, b in (("uncached digest", first["uncached"].get("digest"), p["uncached"].get("digest")),
                           ("held-out pairs", first["eval_pairs"], p["eval_pairs"]),
                           ("steps", first["settings"]["steps"], p["settings"]["steps"])):
            if a is None or a != b:
                raise ValueError(f"cannot merge quality runs with different {what} ({a!r} and {b!r}): their paired "
                                 "differences would compare different references")
    merged = dict(first, settings=dict(first["settings"]), results=[], threshold_search={},
                  command=" && ".join(p.get("command") or "?" for p in parts))
    merged["settings"]["methods"] = []
    merged["settings"]["budgets"] = sorted({b for p in parts for b in p["settings"]["budgets"]}, reverse=True)
    for p in parts:
        rows = {(r["method"], r["budget"]) for r in p["results"]}
        dup = {m for m, b in rows & {(r["method"], r["budget"]) for r in merged["results"]}}
        if dup:
            if not replace:
                raise ValueError(f"methods {sorted(dup)} are in more than one of the runs to merge at the same "
                                 "budgets (--replace: the last run's rows of a method replace the earlier ones)")
            merged["results"] = [r for r in merged["results"] if (r["method"], r["budget"]) not in rows]
            merged["settings"]["methods"] = [m for m in merged["settings"]["methods"] if m not in dup]
        merged["results"] += p["results"]
        merged["settings"]["methods"] += [m for m in p["settings"]["methods"] if m not in merged["settings"]["methods"]]
        for m, points in p["threshold_search"].items():  # a method at other budgets: both runs' search points
            earlier = [] if m in dup else merged["threshold_search"].get(m, [])
            merged["threshold_search"][m] = sorted(earlier + points, key=lambda x: x[0])
        merged.update({k: v for k, v in p.items() if k not in merged or merged[k] is None})
    return merged


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


def main(argv: list[str] | None = None) -> None:
    """``sencache quality`` / ``python benchmarks/quality.py``."""
    d = QualitySettings()
    parser = argparse.ArgumentParser(prog="sencache quality", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/quality", help="output directory")
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--budgets", type=float, nargs="+", default=list(d.budgets), help="NFE fractions to match")
    parser.add_argument("--methods", nargs="+", default=list(d.methods), choices=list(METHODS))
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
    parser.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                        help="do not run: merge the records of these runs (other methods, same uncached videos) into "
                        "OUT/quality.json and render it")
    parser.add_argument("--replace", action="store_true",
                        help="with --merge: a method in several runs takes the last run's rows (a rerun)")
    args = parser.parse_args(argv)
    if (missing := missing_matplotlib("sencache quality")) is not None:
        parser.error(missing)
    if args.merge:
        merged = merge_records([json.loads((Path(d) / "quality.json").read_text()) for d in args.merge], args.replace)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "quality.json").write_text(json.dumps(merged, indent=1) + "\n")
    if args.render_only or args.merge:
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
