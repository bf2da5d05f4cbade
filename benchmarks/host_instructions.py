"""Host work per denoising step as a count of executed instructions (valgrind), free of the machine's timing noise.

``python benchmarks/host_instructions.py`` (about 8 minutes on the 2-core dev CPU; needs ``valgrind``). The timed
benchmark (``benchmarks/host_cost.py``) reads CPU time, which on a shared virtual machine drifts by tens of µs between
runs; instruction counts do not drift, so they show small changes of the per-step host work reliably (they do not
see cache misses or the cost of an instruction, so they are a proxy for time, not a replacement).

Each method runs in its own process under ``valgrind --tool=cachegrind --cache-sim=no``: the tiny Wan transformer of
``host_cost.py`` (2 blocks, one latent token, CFG as a "cond" and an "uncond" call per step, ``no_grad``), called
directly for ``N`` steps. Two runs with ``N = short`` and ``N = long`` steps give the per-step count as
``(I(long) - I(short)) / (long - short)``, which cancels start-up and set-up. A plain run of every worker comes
first: a module compiled to bytecode during one of the two counted runs (a source changed since the last run) would
add its compilation to that run alone, an error of up to 10^5 instructions per step. Methods: uncached, SenCache
eager at ``eps=0`` (flat profile, never skips), diffusers' FirstBlockCache at threshold 0 and MagCache with ratios
that never skip. ``--worker METHOD STEPS`` is the process that valgrind runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = ("uncached", "SenCache", "FirstBlockCache", "MagCache")
SCHEDULE = 20  # scheduler steps; a run cycles through them
DEFAULT_OUT = Path("benchmarks/results/host_instructions_cpu.json")


def worker(method: str, steps: int) -> None:
    """Build the method's tiny pipeline and run ``steps`` denoising steps of direct transformer calls."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch
    from diffusers import FirstBlockCacheConfig, MagCacheConfig

    import sencache
    from sencache.offline_pipelines import build_pipeline

    torch.set_num_threads(1)
    pipe = build_pipeline("wan", seed=0, num_layers=2)
    tr = pipe.transformer
    if method == "SenCache":
        ts = torch.linspace(1000, 0, 5)
        profile = sencache.SensitivityProfile(ts, torch.ones(5), torch.full((5,), 1e-2),
                                              metadata={"transformer_class": type(tr).__name__})
        sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile, eps=0.0, eps_start=0.0))
    elif method == "FirstBlockCache":
        tr.enable_cache(FirstBlockCacheConfig(threshold=0.0))
    elif method == "MagCache":
        tr.enable_cache(MagCacheConfig(threshold=0.0, num_inference_steps=SCHEDULE, mag_ratios=[2.0] * SCHEDULE))
    elif method != "uncached":
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    pipe.scheduler.set_timesteps(SCHEDULE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 1, 2, 2, generator=g)
    enc, neg = (torch.randn(1, 8, tr.config.text_dim, generator=g) for _ in range(2))
    schedule = pipe.scheduler.timesteps
    with torch.no_grad():
        for k in range(steps):
            t = schedule[k % SCHEDULE].expand(1)
            with tr.cache_context("cond"):
                tr(hidden_states=x, timestep=t, encoder_hidden_states=enc, return_dict=False)
            with tr.cache_context("uncond"):
                tr(hidden_states=x, timestep=t, encoder_hidden_states=neg, return_dict=False)
    if method == "SenCache":
        stats = sencache.get_stats(pipe)
        if stats.skipped:
            raise RuntimeError(f"SenCache skipped {stats.skipped} steps at eps=0")


def parse_instructions(text: str) -> int:
    """The ``I refs`` total of a cachegrind report."""
    match = re.search(r"I\s+refs:\s+([\d,]+)", text)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{text[-2000:]}")
    return int(match.group(1).replace(",", ""))


def count(method: str, steps: int) -> int:
    """Instructions of one worker process running ``steps`` steps under valgrind."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null", sys.executable,
           os.path.abspath(__file__), "--worker", method, str(steps)]
    # Fixed string hashing and one OpenMP thread: otherwise dict orders and thread timing change the count run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{method} with {steps} steps failed under valgrind:\n{done.stderr[-3000:]}")
    return parse_instructions(done.stderr)


def per_step(counts: dict[str, dict[int, int]], short: int, long: int) -> dict[str, float]:
    return {m: (c[long] - c[short]) / (long - short) for m, c in counts.items()}


def markdown_table(record: dict) -> str:
    base = record["per_step"]["uncached"]
    fbc = record["per_step"]["FirstBlockCache"] - base
    lines = [f"Executed instructions per denoising step (valgrind cachegrind), tiny Wan (2 blocks, 1 token, CFG: 2 "
             f"transformer calls per step, no_grad), ({record['long']} - {record['short']} steps) / "
             f"{record['long'] - record['short']}; {record['cpu']}, torch {record['versions']['torch']}, "
             f"diffusers {record['versions']['diffusers']}, {record['date']}, `{record['command']}`.", "",
             "| method | instructions / step | over uncached | over uncached / FirstBlockCache's |",
             "|---|---|---|---|"]
    for m in record["methods"]:
        extra = record["per_step"][m] - base
        lines.append(f"| {m} | {record['per_step'][m]:,.0f} | " + ("baseline | |" if m == "uncached" else
                                                                    f"+{extra:,.0f} | {extra / fbc:.2f} |"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(prog="python benchmarks/host_instructions.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON record (a .md table goes next to it)")
    parser.add_argument("--short", type=int, default=40, help="steps of the short run")
    parser.add_argument("--long", type=int, default=140, help="steps of the long run")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return None
    if shutil.which("valgrind") is None:
        parser.error("needs valgrind on PATH")
    if not 0 < args.short < args.long:
        parser.error("need 0 < --short < --long")
    for m in METHODS:  # compiles every module a worker imports: no run under valgrind writes bytecode caches
        subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", m, "1"], check=True)
    jobs = [(m, n) for m in METHODS for n in (args.short, args.long)]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(jobs, pool.map(lambda job: count(*job), jobs), strict=True))
    counts = {m: {n: results[(m, n)] for n in (args.short, args.long)} for m in METHODS}
    import diffusers
    import torch

    record = {
        "benchmark": "host instructions per denoising step", "cpu": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/host_instructions.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "methods": list(METHODS), "short": args.short, "long": args.long, "counts": counts,
        "per_step": per_step(counts, args.short, args.long),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown_table(record))
    print(markdown_table(record))
    return record


if __name__ == "__main__":
    main()
