"""End-to-end cost of SenCache per denoising step on real-size video DiTs, against the uncached step and diffusers' and
cache-dit's caches, with and without regional compilation: ``python benchmarks/e2e.py --out
benchmarks/results/e2e_h200.json`` on a GPU.

The models are the real transformer configurations with random weights, in bf16, called the way their pipelines
call them (``e2e_models.py``); the methods are the rows of ``e2e_methods.py``, each on its own twin of the transformer
(shared weights). The VAE and the text encoder are left out: they run once per video, not per step.

**Alternation.** Every method is set up and run once untimed (compilation, graph capture), then once more for its
memory. Then come the timed rounds: each round runs one denoising loop of every method, in the methods' order on even
rounds and in reverse order on odd rounds, so that a machine that drifts over the run (about 1% over the earlier,
sequential run) moves a method and its baseline together, and a linear drift cancels over each pair of rounds. A
row's figure is its **paired ratio** to its baseline (the uncached loop in the same mode) within each round: the median
over the rounds and the interval from the smallest to the largest, which holds the median with probability
``1 - 2^(1-n)`` for ``n`` rounds (75% at 3, 94% at 5).

- **Overhead at eps=0** (SenCache computes every step; the peers at thresholds that never skip). Targets: at most 1%
  eager and 0.5% graph.
- **Speedup at a fixed skip pattern** (compute, skip x3, ...) as a fraction of the ideal ``steps / NFE``. Target: at
  least 97%, also on top of regional compilation.
- **Memory**: the peak of the method's second loop (``torch.cuda.max_memory_allocated``) above what was allocated
  before its twin was set up, its difference to the baseline's, and SenCache's residual cache
  (``sencache.residual_bytes``). Target: the difference at most the residual cache plus 10%. On the CPU only the
  residual bytes are reported.
- **Host syncs per step**, counted with ``torch.cuda.set_sync_debug_mode("warn")`` over one loop.

``--render FILE [--readme README.md]`` rewrites the markdown table (and the README block between the
``<!-- e2e-table:start/end -->`` markers) from a results file. ``--smoke`` runs tiny configurations (on the CPU by
default, where regional compilation uses dynamo's ``eager`` backend) to check this script; its numbers say nothing
about GPUs and are not committed.
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
from e2e_methods import Method, methods
from e2e_models import MODELS, SMOKE_MODELS, Model, denoise
from tqdm.auto import tqdm

import sencache
from sencache.hooks import _hook
from sencache.records import fill_readme, run_stamp, table_markers

__all__ = ["MODELS", "SMOKE_MODELS", "main", "markdown_table", "measure"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_syncs(run: Callable[[], Any], device: torch.device) -> int | None:
    """Host syncs in one call of ``run``, as ``set_sync_debug_mode("warn")`` reports them (None off CUDA)."""
    if device.type != "cuda":
        return None
    _sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def paired(times: list[float], base: list[float]) -> list[float]:
    """A row's loop time over its baseline's, round by round."""
    return [t / b for t, b in zip(times, base, strict=True)]


def derive(rows: dict[str, Any], steps: int) -> None:
    """Each row's time per step and spread, its paired ratios to its baseline (median and min-max), the pattern's
    speedup against the ideal, and the memory overhead against the baseline."""
    for row in rows.values():
        times = row["times"]
        if times:
            row["s_per_step"] = statistics.median(times) / steps
            row["spread"] = (min(times) / steps, max(times) / steps)
    for row in rows.values():
        base = rows.get(row["baseline"]) if row["baseline"] else None
        if base is None or not row["times"]:
            continue
        ratios = paired(row["times"], base["times"])
        row["vs_uncached"] = statistics.median(ratios) - 1
        row["vs_interval"] = (min(ratios) - 1, max(ratios) - 1)
        if row.get("pattern"):
            speedups = [1 / r for r in ratios]
            row["speedup"] = statistics.median(speedups)
            row["speedup_interval"] = (min(speedups), max(speedups))
            row["ideal_speedup"] = steps / row["nfe"]
            row["fraction_of_ideal"] = row["speedup"] / row["ideal_speedup"]
        if row["peak_bytes"] is not None and base["peak_bytes"] is not None:
            row["memory_overhead_bytes"] = row["peak_bytes"] - base["peak_bytes"]
            if row.get("residual_bytes"):
                row["overhead_vs_residual"] = row["memory_overhead_bytes"] / row["residual_bytes"]


def _footprint(run: Callable[[], Any], device: torch.device, before: int | None) -> int | None:
    """The peak allocated during ``run()`` above ``before`` (CUDA; None elsewhere)."""
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(model: Model, steps: int, rounds: int, rows_to_run: list[Method], max_seconds: float | None = None,
            save: Callable[[dict[str, Any], list[list[str]]], None] = lambda rows, order: None) -> dict[str, Any]:
    """Every method's row for one model (see the module docstring); ``save(rows, order)`` (``order``: the methods'
    order in each round so far) after the set-up and after each round, so that a run cut off keeps what it measured.
    Rounds stop early once ``max_seconds`` have passed since the first one began (one round at least)."""
    device = model.latents.device
    rows: dict[str, Any] = {}
    runs, outputs = [], {}
    if not getattr(model.transformer, "_repeated_blocks", None):  # no regional compilation for this class
        rows_to_run = [m for m in rows_to_run if not m.regional]
    with torch.inference_mode():
        for m in tqdm(rows_to_run, desc=f"{model.name}: set-up", leave=False):
            _sync(device)
            before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
            tr = model.twin()
            call = m.setup(model, tr, steps)

            def run(tr: torch.nn.Module = tr, call: Any = call) -> torch.Tensor:
                return denoise(model, tr, call, steps)

            outputs[m.name] = run().float()  # untimed: compilation, graph capture
            row = rows[m.name] = {"baseline": m.baseline, "pattern": m.pattern, "times": [],
                                  "peak_bytes": _footprint(run, device, before)}
            if m.sencache:
                stats = sencache.get_stats(tr)
                row.update(nfe=stats.nfe, steps=steps, mode=_hook(tr).mode, residual_bytes=sencache.residual_bytes(tr))
            runs.append((m.name, run))
        reference = outputs.get("uncached eager")
        for name, out in outputs.items():  # rows that never skip should give the uncached output (to rounding)
            if reference is not None:
                rows[name]["max_abs_diff"] = (out - reference).abs().max().item()
        del outputs
        order_log: list[list[str]] = []
        save(rows, order_log)
        start = time.perf_counter()
        for r in tqdm(range(rounds), desc=f"{model.name}: rounds", leave=False):
            order = runs if r % 2 == 0 else runs[::-1]  # forward, then backward: a linear drift cancels per pair
            for name, run in order:
                _sync(device)
                t0 = time.perf_counter()
                run()
                _sync(device)
                rows[name]["times"].append(time.perf_counter() - t0)
            order_log.append([name for name, _ in order])
            derive(rows, steps)
            save(rows, order_log)
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break
        for name, run in runs:
            syncs = count_syncs(run, device)
            rows[name]["host_syncs_per_step"] = None if syncs is None else syncs / steps
    save(rows, order_log)
    return rows


def _selected(all_rows: list[Method], names: str | None) -> list[Method]:
    """The rows named (comma-separated; None: all), with the baselines they are paired with."""
    if names is None:
        return all_rows
    wanted = {n.strip() for n in names.split(",")}
    known = {m.name for m in all_rows}
    if wanted - known:
        raise SystemExit(f"--methods: unknown {sorted(wanted - known)}; choose from: {', '.join(sorted(known))}")
    wanted |= {m.baseline for m in all_rows if m.name in wanted and m.baseline}
    return [m for m in all_rows if m.name in wanted]


def _pct(value: float) -> str:
    return f"{value:+.2%}"


def _size(value: int | None) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point."""
    if value is None:
        return ""
    units = ["B", "KiB", "MiB", "GiB"]
    k = 0
    while k + 1 < len(units) and abs(value) >= 1024 ** (k + 1):
        k += 1
    return f"{value / 1024 ** k:.1f} {units[k]}"


def markdown_table(record: dict[str, Any]) -> str:
    """One row per model and method: time per step, paired ratio to the baseline, speedup, memory, host syncs."""
    how = (f"{record['repeats']} alternating rounds (ratios paired within a round: median [min, max])"
           if "order" in record else f"median of {record['repeats']} loops, methods one after another")
    lines = [f"{record['device']}, {record['dtype']}, {record['steps']} steps per loop, {how}; random-weight "
             f"real-size transformers ({record['date']}, `{record['command']}`).", "",
             "| model | method | ms / step | vs baseline | speedup / ideal | peak memory | memory vs baseline "
             "| residual cache | host syncs / step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model, rows in record["results"].items():
        for name, r in rows.items():
            if "s_per_step" not in r:  # set up, not timed yet (a run cut off)
                continue
            vs = ""
            if "vs_uncached" in r:
                vs = _pct(r["vs_uncached"])
                if "vs_interval" in r:
                    vs += f" [{_pct(r['vs_interval'][0])}, {_pct(r['vs_interval'][1])}]"
                vs += f" vs {r['baseline']}" if r.get("baseline") else ""
            ideal = (f"{r['speedup']:.2f}x / {r['ideal_speedup']:.2f}x = {r['fraction_of_ideal']:.1%}"
                     if "speedup" in r else "")
            memory = _size(r.get("memory_overhead_bytes"))
            if "overhead_vs_residual" in r:
                memory += f" ({r['overhead_vs_residual']:.2f}x the residual cache)"
            syncs = "n/a" if r.get("host_syncs_per_step") is None else f"{r['host_syncs_per_step']:g}"
            if "graph" in name and r.get("mode", "graph") != "graph":  # graph mode that fell back says so
                name = f"{name} (ran in {r['mode']} mode)"
            lines.append(f"| {model} | {name} | {1000 * r['s_per_step']:.2f} | {vs} | {ideal} | "
                         f"{_size(r.get('peak_bytes'))} | {memory} | {_size(r.get('residual_bytes'))} | {syncs} |")
    return "\n".join(lines) + "\n"


README_MARKERS = table_markers("e2e")


def _extend(record: dict[str, Any], old: dict[str, Any], path: Path) -> None:
    """Start ``record`` from an earlier run's results (``--append``); its settings must match."""
    differ = [f"{k} {old.get(k)!r} there, {record[k]!r} now" for k in ("device", "dtype", "steps", "repeats")
              if old.get(k) != record[k]]
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
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS) + " (with --smoke: "
                        + ", ".join(SMOKE_MODELS) + "); default: all")
    parser.add_argument("--methods", help="comma-separated subset of the rows (their baselines are added)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per loop")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (one loop of every method each)")
    parser.add_argument("--max-seconds", type=float, help="start no new round after this many seconds per model")
    parser.add_argument("--smoke", action="store_true", help="tiny models (on the CPU unless --device): checks "
                        "the script only")
    parser.add_argument("--device", help="with --smoke: the device (default cpu); otherwise always cuda")
    parser.add_argument("--render", type=Path, help="only rewrite the table from this results file")
    parser.add_argument("--readme", type=Path, help="also fill the README block between the e2e-table markers")
    parser.add_argument("--append", action="store_true", help="add these models to the results already in --out "
                        "(measured with the same device, dtype, steps and repeats)")
    args = parser.parse_args(argv)
    if args.render is None:
        table = SMOKE_MODELS if args.smoke else MODELS
        names = args.models.split(",") if args.models else list(table)
        if set(names) - set(table):
            raise SystemExit(f"--models: unknown {sorted(set(names) - set(table))}; choose from: {', '.join(table)}")
        specs = {k: table[k] for k in names}
        device = (args.device or "cpu") if args.smoke else "cuda"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit("benchmarks/e2e.py needs a CUDA GPU (or --smoke for a CPU check of the script)")
        cuda = device.startswith("cuda")
        dtype = torch.bfloat16 if cuda else torch.float32
        # regional compilation: inductor on a GPU; dynamo alone on the CPU (inductor compiles C++ there, for minutes)
        compile_options = {"fullgraph": True} if cuda else {"fullgraph": True, "backend": "eager"}
        rows_to_run = _selected(methods(graph=cuda, compile_options=compile_options), args.methods)
        record = {"device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
                  "dtype": str(dtype).removeprefix("torch."), "steps": args.steps, "repeats": args.repeats,
                  **run_stamp(),  # versions, date
                  "command": "python benchmarks/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  "results": {}}
        if args.append and args.out.is_file():
            _extend(record, json.loads(args.out.read_text()), args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Each twin's hooks make their own entries in dynamo's cache of the blocks' compiled code (a user's one
        # transformer makes a few): room for all of them, so that no row runs uncompiled or fails under fullgraph.
        with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, 64)):
            for name, spec in specs.items():
                model = Model(name, spec, device, dtype)

                def save(rows: dict[str, Any], order: list[list[str]], name: str = name) -> None:
                    record["results"][name] = rows
                    record.setdefault("order", {})[name] = order
                    args.out.write_text(json.dumps(record, indent=2) + "\n")

                measure(model, args.steps, args.repeats, rows_to_run, args.max_seconds, save)
                del model
                if cuda:
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
