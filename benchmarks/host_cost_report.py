"""The summaries and outputs of ``benchmarks/host_cost.py``: quantiles, paired overheads against the uncached
call, the bootstrap interval of the SenCache / FirstBlockCache ratio, the markdown table and the JSON layout."""

from __future__ import annotations

import json
import math
import random
import re
import statistics
from typing import Any

from host_cost_measure import BASELINE, FIGURES


def quantile(values: list[float], p: float) -> float:
    """The ``p`` quantile of ``values`` (linear interpolation between order statistics)."""
    s = sorted(values)
    pos = p * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and 5th/95th percentiles."""
    out: dict[str, float] = {name: quantile(values, p) for name, p in
                             (("median", 0.5), ("p25", 0.25), ("p75", 0.75), ("p5", 0.05), ("p95", 0.95))}
    out["n"] = len(values)
    return out


def ratio_of_medians(num: list[float], den: list[float], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``median(num) / median(den)`` of values paired by round, with a bootstrap 95% interval (rounds resampled)."""
    rng = random.Random(seed)
    n = len(num)
    boot = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        d = statistics.median(den[i] for i in idx)
        if d != 0:
            boot.append(statistics.median(num[i] for i in idx) / d)
    den_median = statistics.median(den)
    return {"ratio": statistics.median(num) / den_median if den_median != 0 else None,
            "ci95": [quantile(boot, 0.025), quantile(boot, 0.975)] if boot else None, "resamples": len(boot)}


def paired(raw: dict[str, dict[str, list]], method: str, other: str, key: str) -> list[float]:
    """``method`` minus ``other`` per round, for figure ``key``."""
    return [a - b for a, b in zip(raw[method][key], raw[other][key], strict=True)]


def summarize(raw: dict[str, dict[str, list]]) -> dict[str, Any]:
    """Per method: every figure's spread and, against the baseline, the paired overheads (µs, and relative for
    the step); then SenCache against FirstBlockCache: ratio of the median paired overheads and paired difference."""
    out: dict[str, Any] = {}
    for m, figures in raw.items():
        row: dict[str, Any] = {key: spread(figures[key]) for key in FIGURES}
        row["computed_steps"] = sorted(set(figures["computed_steps"]))
        row["last_block_runs"] = sorted(set(figures["last_block_runs"]))
        if m != BASELINE:
            for key in FIGURES:
                row[f"overhead_{key}"] = spread(paired(raw, m, BASELINE, key))
            for key in ("step_us", "step_cpu_us"):
                row[f"overhead_{key}_fraction"] = spread(
                    [a / b - 1 for a, b in zip(figures[key], raw[BASELINE][key], strict=True)])
        out[m] = row
    if "SenCache" in raw and "FirstBlockCache" in raw:
        out["SenCache_vs_FirstBlockCache"] = {
            key: {"overhead_ratio": ratio_of_medians(paired(raw, "SenCache", BASELINE, key),
                                                     paired(raw, "FirstBlockCache", BASELINE, key)),
                  # the same comparison without the baseline: SenCache minus FirstBlockCache, paired by round
                  "difference_us": spread(paired(raw, "SenCache", "FirstBlockCache", key))}
            for key in ("step_us", "step_cpu_us", "transformer_us", "transformer_cpu_us")}
    return out


# ----------------------------------------------------------------------------------------------- where time goes
def _fmt_spread(o: dict[str, float]) -> str:
    return f"{o['median']:+.1f} [{o['p25']:+.1f}, {o['p75']:+.1f}] ({o['p5']:+.1f}, {o['p95']:+.1f})"


def markdown_table(record: dict[str, Any]) -> str:
    """The summary as markdown: per-step times and paired overheads against the uncached step, then the
    SenCache / FirstBlockCache comparison, the isolated pieces, the pieces timed in place and the profile when the
    record has them."""
    s = record["settings"]
    lines = [f"Host cost per denoising step, tiny Wan ({s['layers']} blocks, {s['tokens']} token, CFG: 2 transformer "
             f"calls per step, {s.get('grad_mode', 'inference_mode')}), {s['rounds']} interleaved rounds of "
             f"{s['steps']} steps, {record['cpu']} ({record['torch_threads']} torch thread), "
             f"torch {record['versions']['torch']}, diffusers "
             f"{record['versions']['diffusers']}, {record['date']}, `{record['command']}`"
             + (f" ({record['label']})" if record.get("label") and record["label"] not in record["command"]
                else "") + ".", "",
             "Medians over rounds; overheads are paired per round (method minus uncached in the same round): median "
             "[quartiles] (5-95%). CPU = the thread's CPU time, wall = the wall clock.", "",
             "| method | step CPU (µs) | overhead CPU (µs) | overhead CPU (%) | step wall (µs) | overhead wall (µs) "
             "| overhead inside the transformer calls, CPU (µs) |",
             "|---|---|---|---|---|---|---|"]
    for m in record["methods"]:
        row = record["summary"][m]
        if m == BASELINE:
            cells = ["baseline"] * 2 + [f"{row['step_us']['median']:.1f}", "baseline", "baseline"]
        else:
            cells = [_fmt_spread(row["overhead_step_cpu_us"]),
                     f"{100 * row['overhead_step_cpu_us_fraction']['median']:+.2f}%",
                     f"{row['step_us']['median']:.1f}", _fmt_spread(row["overhead_step_us"]),
                     f"{row['overhead_transformer_cpu_us']['median']:+.1f}"]
        lines.append(f"| {m} | {row['step_cpu_us']['median']:.1f} | " + " | ".join(cells) + " |")
    cmp = record["summary"].get("SenCache_vs_FirstBlockCache")
    if cmp:
        lines.append("")
        for key, clock in (("step_cpu_us", "CPU"), ("step_us", "wall")):
            r, d = cmp[key]["overhead_ratio"], cmp[key]["difference_us"]
            ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
            ci = f" (bootstrap 95%: {r['ci95'][0]:.2f} to {r['ci95'][1]:.2f})" if r["ci95"] else ""
            lines.append(f"- SenCache / FirstBlockCache overhead, {clock}: **{ratio}**{ci}; SenCache step minus "
                         f"FirstBlockCache step, paired: {_fmt_spread(d)} µs.")
    comp = record.get("components")
    if comp:
        lines += ["", "Isolated pieces of a SenCache step, timed alone without a profiler:", "",
                  "| piece | µs per call | calls per step | µs per step |", "|---|---|---|---|"]
        for k, v in comp["us_per_call"].items():
            lines.append(f"| {k} | {v:.1f} | {comp['calls_per_step'][k]:g} | {comp['us_per_step'][k]:.1f} |")
    situ = record.get("in_situ")
    if situ:
        lines += ["", f"The pieces timed in place, inside {situ['calls']} pipeline calls per method (steps 2..N; the "
                  f"decide op timed alone in a loop: {situ['decide_op_isolated_us']:.1f} µs per call):", "",
                  "| method | piece | µs per call, median [quartiles] | calls per step | µs per step |",
                  "|---|---|---|---|---|"]
        for label, p in sorted(situ["pieces"].items(), key=lambda kv: (kv[1]["method"], kv[0])):
            q1, q3 = p["quartiles_us"]
            lines.append(f"| {p['method']} | {label} | {p['median_us']:.1f} [{q1:.1f}, {q3:.1f}] | "
                         f"{p['calls_per_step']:.2f} | {p['us_per_step']:.1f} |")
    prof = record.get("profile")
    if prof:
        total = prof["profiled_us_per_step"]
        lines += ["", f"cProfile of {prof['calls']} calls per method, each profiled alone, median per function "
                  f"(inflated by the profiler: a profiled step took {total['SenCache']:.0f} µs with SenCache, "
                  f"{total[BASELINE]:.0f} µs uncached; µs per step):", "",
                  "| item | calls / step | own (µs) | cumulative (µs) |", "|---|---|---|---|"]
        for label, item in prof["selected"].items():
            if not item["found"]:
                continue
            own = "" if item["tottime_us"] is None else f"{item['tottime_us']:.1f}"
            lines.append(f"| {label} | {item['calls']:g} | {own} | {item['cumtime_us']:.1f} |")
        missing = [label for label, item in prof["selected"].items() if not item["found"]]
        if missing:
            lines += ["", "Not in this code: " + "; ".join(missing) + "."]
        lines += ["", "Functions SenCache calls more often than the uncached pipeline, by the own time of the extra "
                  "calls (µs per step, profiled):", "",
                  "| function | added own time | cumulative | calls / step (SenCache, uncached) |", "|---|---|---|---|"]
        for a in prof["top_added"][:15]:
            lines.append(f"| `{a['function']}` | {a['added_own_us']:.1f} | {a['cumtime_us']:.1f} | "
                         f"{a['calls_sencache']:g}, {a['calls_uncached']:g} |")
    return "\n".join(lines) + "\n"


def dumps(record: dict[str, Any]) -> str:
    """JSON with one key per line, but each list of plain values (the per-round numbers) on one line."""
    text = json.dumps(record, indent=1)
    flat = re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]",
                  lambda m: "[" + " ".join(line.strip() for line in m.group(1).splitlines()) + "]", text)
    return flat if json.loads(flat) == record else text
