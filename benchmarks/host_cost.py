"""Host cost per denoising step of SenCache (eager, eps=0) against diffusers' FirstBlockCache and MagCache, on a
minimal Wan transformer on the CPU: ``python benchmarks/host_cost.py`` (about 3 minutes on the 2-core dev CPU).

What is measured. A tiny ``WanPipeline`` (``sencache.offline_pipelines``, 2 blocks of width 24, one latent token)
runs with CFG on, so every denoising step is a "cond" and an "uncond" transformer call, exactly as on Wan 2.1. The
transformer is so small that a step is almost all host work: Python, the diffusers hook machinery, torch op dispatch.
Four copies of the pipeline (same weights) carry one method each, applied once:

- ``uncached``: the plain pipeline, the baseline;
- ``SenCache``: ``sencache.apply_sencache(pipe, SenCacheConfig(profile=<flat profile>, eps=0, eps_start=0))`` in
  eager mode. At eps=0 no step can be skipped; ``sencache.get_stats`` is checked after every call;
- ``FirstBlockCache``: ``transformer.enable_cache(FirstBlockCacheConfig(threshold=0))``, which never skips;
- ``MagCache``: ``MagCacheConfig(threshold=0, mag_ratios=[2] * steps)``: its accumulated error is at least 1 after
  any step, above the threshold, so it never skips.

Every call of every method is checked to have run the last block's feed-forward ``2 * steps`` times (a forward hook
on it counts its calls), so no method ever skipped, and all of them do the same block work.

How. A step's time is the interval between two ``callback_on_step_end`` ticks, the pipeline's own per-step
callback, and a call's figure is the median of its steps 2..N. That is the steady-state step: it leaves out the
set-up before the loop, the first step (a pipeline call's one-time bookkeeping: new-call detection, state
allocation) and the end of the call (the hooks' ``reset_state``), and the median drops the steps in which another
process took the core. It includes everything a method adds to a step, also what lies outside the transformer's
forward: diffusers' ``cache_context`` walks every hook registry under the transformer on entry and exit, which costs
more with hooks on the blocks. The rest of a step (scheduler step, CFG combination, the blocks' own compute) is the
same work for every method and cancels in the paired differences. Each interval is read on two clocks: the wall
clock and this thread's CPU time (``time.thread_time_ns``). With one torch thread all the work runs on this thread,
so on an idle machine the two agree; on a shared one the CPU time leaves out the waits for a core, and it is the
headline figure (``PRIMARY``). Secondary figures per call: the mean step, the time inside the step's two transformer
calls (forward pre/post hooks on the transformer, around diffusers' hooks), and the whole pipeline call
(``output_type="latent"``: no VAE) per step.

The methods run interleaved in one process: each round calls every method once, in an order rotated by one every
round, after a few warm-up rounds. A slow drift of the machine (other processes, clock changes) then hits all methods
alike. Per method the record gives the median step time; per round, each method's step time minus the uncached one
of the same round (the paired overhead), summarised as median, quartiles and 5-95% range; and the SenCache /
FirstBlockCache ratio of the median paired overheads, with a bootstrap 95% interval over rounds.

``--profile N`` adds a cProfile of N SenCache calls: the time per step of its own functions (the decision, the
profile lookup, the statistics, the block hooks) and of diffusers' hook machinery. cProfile adds its own cost to
every Python call, so these figures are larger than the real ones; their proportions guide optimisation.

Outputs: a JSON record (CPU, torch threads, library versions, date, command, settings, per-round raw numbers,
summaries) and a markdown table next to it (``--out``, default ``benchmarks/results/host_cost_cpu.json``).

Layout: this file assembles the record and holds the command line; ``host_cost_measure.py`` builds the methods
and runs the interleaved rounds, ``host_cost_profile.py`` the cProfile and the isolated pieces,
``host_cost_report.py`` the summaries, the markdown table and the JSON layout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from host_cost_insitu import in_situ, isolated_decide_us
from host_cost_measure import BASELINE, GEOMETRY, GRAD_MODES, METHODS, PRIMARY, measure
from host_cost_profile import components, profile_methods
from host_cost_report import dumps, markdown_table, summarize

import sencache

DEFAULT_OUT = Path("benchmarks/results/host_cost_cpu.json")


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where it exists)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """torch, diffusers, Triton and Python versions."""
    import diffusers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    return versions


def source_info() -> dict[str, Any]:
    """Which sencache code ran: its path, and the git commit and uncommitted changes of sencache/ where it is a git
    checkout (None otherwise)."""
    root = Path(sencache.__file__).resolve().parents[1]
    info: dict[str, Any] = {"sencache_path": str(Path(sencache.__file__).resolve().parent), "git_commit": None,
                            "git_changed": None}
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            changed = subprocess.run([*git, "status", "--porcelain", "--", "sencache", "sencache_kernels"],
                                     capture_output=True, text=True, timeout=10)
            info["git_changed"] = changed.stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _load() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other processes on the machine add noise), where the OS has them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run(out: Path, rounds: int, steps: int, warmup: int = 3, layers: int = 2, threads: int = 1,
        profile_calls: int = 0, command: str | None = None, label: str = "",
        component_calls: int = 2000, grad_mode: str = "no_grad") -> dict[str, Any]:
    """Measure, summarise, and write ``out`` (JSON) and ``out.with_suffix('.md')``; returns the record.

    Args:
        out: the JSON record's path; the markdown table goes next to it (``.md``).
        rounds: interleaved rounds (one call of every method each), after ``warmup`` untimed ones.
        steps: denoising steps per pipeline call (>= 2).
        layers: transformer blocks of the tiny Wan.
        threads: torch intra-op threads while measuring (restored afterwards).
        profile_calls: pipeline calls to cProfile per method, and to time the pieces in place per method (0: neither;
            the pieces are also timed alone).
        command: the command line to store; label: free text to store.
        component_calls: calls per timing of each isolated piece.
        grad_mode: ``"no_grad"`` (what the pipelines' ``__call__`` sets itself) or ``"inference_mode"`` around the
            calls. SenCache's step clock reads a step's Jx, Jt from a per-call table only outside inference mode
            (inference tensors have no version counter), so the two differ for SenCache.
    """
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, rounds, steps, warmup, layers, profile_calls, command, label, component_calls, grad_mode)
    finally:
        torch.set_num_threads(saved_threads)


def _run(out: Path, rounds: int, steps: int, warmup: int, layers: int, profile_calls: int, command: str | None,
         label: str, component_calls: int, grad_mode: str) -> dict[str, Any]:
    started = time.time()
    load_before = _load()
    measured = measure(rounds, steps, warmup, layers, grad_mode)
    record: dict[str, Any] = {
        "benchmark": "host cost per denoising step",
        "cpu": cpu_name(), "device": "cpu", "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": library_versions(), "sencache": sencache.__version__, "source": source_info(),
        "label": label,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": command or f"python benchmarks/host_cost.py --rounds {rounds} --steps {steps}",
        "methods": list(METHODS), "baseline": BASELINE, "primary": PRIMARY,
        "load_average": {"before": load_before, "after_rounds": _load()},
        "settings": {"rounds": rounds, "warmup_rounds": warmup, "steps": steps, "layers": layers, "cfg": True,
                     "transformer_calls_per_step": 2, "tokens": 1, "geometry": GEOMETRY,
                     "grad_mode": grad_mode,
                     "latent": [1, 16, 1, 2, 2], "dtype": "float32",
                     "sencache": "eager, eps=0, eps_start=0, flat profile",
                     "first_block_cache": "threshold=0", "mag_cache": f"threshold=0, mag_ratios=[2.0]*{steps}",
                     "figures": {
                         "step_us": "median over steps 2..N of the interval between callback_on_step_end ticks",
                         "step_us_mean": "(last - first callback_on_step_end tick) / (steps - 1)",
                         "transformer_us": "median over steps 2..N of the time inside the step's two transformer "
                                           "calls",
                         "call_us_per_step": "whole pipeline call (output_type='latent') / steps",
                         "*_cpu_us*": "the same in this thread's CPU time (thread_time_ns) instead of the wall clock"}},
        "order": measured["order"], "raw": measured["raw"], "summary": summarize(measured["raw"]),
    }
    if profile_calls:
        record["components"] = components(steps, layers, component_calls, grad_mode)
        record["in_situ"] = {**in_situ(steps, layers, max(profile_calls, 2), grad_mode),
                             "decide_op_isolated_us": isolated_decide_us(component_calls)}
        record["profile"] = profile_methods(profile_calls, steps, layers, grad_mode=grad_mode)
    record["wall_s"] = time.time() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(record) + "\n")
    out.with_suffix(".md").write_text(markdown_table(record))
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python benchmarks/host_cost.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON record (a .md table goes next to it)")
    parser.add_argument("--rounds", type=int, default=400, help="interleaved rounds (one call per method each)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per pipeline call")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--profile", type=int, default=8, metavar="N",
                        help="also cProfile N calls of SenCache and uncached, and time SenCache's pieces (0: off)")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite the markdown table next to this record from it (no measurement)")
    parser.add_argument("--label", default="", help="free text stored in the record (e.g. which code this measures)")
    parser.add_argument("--grad-mode", choices=list(GRAD_MODES), default="no_grad",
                        help="around the calls: no_grad (the pipelines' own) or inference_mode")
    args = parser.parse_args(argv)
    if args.render is not None:
        record = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(markdown_table(record))
        print(markdown_table(record))
        return record
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    command = "python benchmarks/host_cost.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record = run(args.out, args.rounds, args.steps, args.warmup, args.layers, args.threads, args.profile,
                 command.strip(), args.label, grad_mode=args.grad_mode)
    print(markdown_table(record))
    return record


if __name__ == "__main__":
    main()
