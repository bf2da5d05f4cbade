"""The quality benchmark's report, from its record (``quality.json``): the markdown table, the plots and the README
block. ``sencache quality --render-only`` redraws them from a committed record."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from sencache.quality_methods import METHODS
from sencache.records import fill_readme, table_markers

__all__ = ["README_MARKERS", "estimator_table", "markdown_table", "matched_table", "paired_table", "plot_all",
           "render", "target_table"]

README_MARKERS = table_markers("quality")


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
    order = list(METHODS)
    for r in sorted(record["results"], key=lambda r: (-r["budget"], order.index(r["method"]))):
        lines.append(
            f"| {r['budget']:.0%} | {METHODS[r['method']].label} | {r['threshold']:.4g} | {r['nfe']['mean']:.1f} ± "
            f"{r['nfe']['std']:.1f} | {r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f} | {r['ssim']['mean']:.4f} ± "
            f"{r['ssim']['std']:.4f} | {r['rel_l2']['mean']:.4f} ± {r['rel_l2']['std']:.4f} | "
            f"{r['wall_s']['mean']:.2f} |")
    return "\n".join(lines) + "\n"


def _mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def _with_pairs(record: dict) -> list[dict]:
    """The rows with per-pair values (records made before them, like the H100 run of 2026-11-22, have none)."""
    return [r for r in record["results"] if "per_pair" in r]


def _difference_cells(diffs: dict[str, list[float]]) -> str:
    """The table cells of per-pair differences ``{"psnr": [...], "ssim": [...], "rel_l2": [...]}``: each mean ±
    standard error, then on how many pairs PSNR was higher."""
    cells = [f"{m:+.2f} ± {se:.2f}" if key == "psnr" else f"{m:+.4f} ± {se:.4f}"
             for key, (m, se) in ((k, _mean_se(diffs[k])) for k in ("psnr", "ssim", "rel_l2"))]
    return " | ".join(cells) + f" | {sum(d > 0 for d in diffs['psnr'])} of {len(diffs['psnr'])}"


def paired_table(record: dict, reference: str = "sencache", methods: tuple[str, ...] | None = None) -> str | None:
    """Each other method's (of ``methods``, default all) quality minus ``reference``'s on the same held-out pairs,
    per budget: the mean paired difference ± its standard error, and on how many pairs the method did better (None
    without two such methods; rows of records made before per-pair values are left out)."""
    rows = {(r["method"], r["budget"]): r for r in _with_pairs(record)
            if methods is None or r["method"] in methods or r["method"] == reference}
    order = list(METHODS)
    lines = [f"Paired differences against {METHODS[reference].label} on the same held-out pairs (method minus "
             f"{METHODS[reference].label}; mean ± standard error; better: pairs on which the method did better).", "",
             "| budget | method | NFE (method / ref.) | Δ PSNR (dB) | Δ SSIM | Δ rel. L2 | better (PSNR) |",
             "|---|---|---|---|---|---|---|"]
    for (method, budget), r in sorted(rows.items(), key=lambda kv: (-kv[0][1], order.index(kv[0][0]))):
        ref = rows.get((reference, budget))
        if method == reference or ref is None:
            continue
        diffs = {key: [a - b for a, b in zip(r["per_pair"][key], ref["per_pair"][key], strict=True)]
                 for key in ("psnr", "ssim", "rel_l2")}
        lines.append(f"| {budget:.0%} | {METHODS[method].label} | {r['nfe']['mean']:.1f} / {ref['nfe']['mean']:.1f} | "
                     f"{_difference_cells(diffs)} |")
    return "\n".join(lines) + "\n" if len(lines) > 4 else None


def matched_table(record: dict, reference: str, method: str) -> str | None:
    """``method``'s quality minus ``reference``'s at exactly the same NFE on every held-out video: per budget of
    ``reference`` and per pair, the ``method`` row (of any budget) that computed as many steps on that pair as
    ``reference`` did, the nearest budget first. A method that realizes its target on every video (the planned
    schedule) is run at the neighbouring targets for this. Pairs without such a row are left out and counted (None
    without rows of both methods with per-pair values)."""
    mine = [r for r in _with_pairs(record) if r["method"] == method]
    refs = sorted((r for r in _with_pairs(record) if r["method"] == reference), key=lambda r: -r["budget"])
    if not mine or not refs:
        return None
    steps = record["settings"]["steps"]
    lines = [f"{METHODS[method].label} against {METHODS[reference].label} at the same NFE on every held-out video "
             f"(each video's difference taken from the {METHODS[method].label} row that computed as many steps on it; "
             "mean ± standard error; better: videos on which it did better).", "",
             f"| budget | NFE (both) | {METHODS[method].label} rows used (target: videos) | Δ PSNR (dB) | Δ SSIM | "
             "Δ rel. L2 | better (PSNR) |", "|---|---|---|---|---|---|---|"]
    for ref in refs:
        diffs: dict[str, list[float]] = {"psnr": [], "ssim": [], "rel_l2": []}
        used: dict[float, int] = {}
        nfe = []
        for i, timeline in enumerate(ref["timelines"]):
            same = [r for r in mine if round(sum(r["timelines"][i]), 6) == round(sum(timeline), 6)]
            if not same:
                continue
            r = min(same, key=lambda r: abs(r["budget"] - ref["budget"]))
            used[_target(r, steps)] = used.get(_target(r, steps), 0) + 1
            nfe.append(sum(timeline))
            for key, values in diffs.items():
                values.append(r["per_pair"][key][i] - ref["per_pair"][key][i])
        count = len(ref["timelines"])
        if len(nfe) < 2:
            lines.append(f"| {ref['budget']:.0%} | - | none ({len(nfe)} of {count} videos matched) | - | - | - | - |")
            continue
        rows_used = ", ".join(f"{t:g}: {n}" for t, n in sorted(used.items()))
        missing = f" ({count - len(nfe)} of {count} videos unmatched)" if len(nfe) < count else ""
        lines.append(f"| {ref['budget']:.0%} | {statistics.fmean(nfe):.2f} | {rows_used}{missing} | "
                     f"{_difference_cells(diffs)} |")
    return "\n".join(lines) + "\n"


def estimator_table(record: dict) -> str | None:
    """The chained and the central-difference profiles side by side (when the run calibrated both): per step, the
    difference of their Jx and Jt against the sample-to-sample spread of the chained one."""
    a, b = record.get("profile"), record.get("profile_central")
    if a is None or b is None or "jx_std" not in a:
        return None
    lines = ["Calibration estimators on the same calibration pairs: |chained - central| per step, in units of the "
             "chained profile's sample-to-sample standard deviation at that step.", "",
             "| table | median | 90th percentile | max | steps over 1 std |", "|---|---|---|---|---|"]
    for name in ("jx", "jt"):
        z = sorted(abs(x - y) / s if s > 0 else (0.0 if x == y else math.inf)
                   for x, y, s in zip(a[name], b[name], a[f"{name}_std"], strict=True))
        q90 = z[min(len(z) - 1, math.ceil(0.9 * len(z)) - 1)]
        lines.append(f"| {name.capitalize()} | {statistics.median(z):.3f} | {q90:.3f} | {z[-1]:.3f} | "
                     f"{sum(v > 1 for v in z)} of {len(z)} |")
    return "\n".join(lines) + "\n"


def _target(row: dict, steps: int) -> float:
    """A row's NFE target, ``budget x steps`` (rounded: 0.28 x 50 is 14, not 14.000000000000002)."""
    return round(row["budget"] * steps, 6)


def _targeted(record: dict) -> list[dict]:
    """The results of the targeted rows (threshold = budget), with each video's realized NFE (its timeline's sum)."""
    return [r for r in record["results"] if METHODS[r["method"]].targeted]


def target_table(record: dict) -> str | None:
    """Realized against target NFE of the targeted rows (the planner's prediction, no search): mean error and the
    per-video spread (None without such rows)."""
    rows = _targeted(record)
    if not rows:
        return None
    steps = record["settings"]["steps"]
    order = list(METHODS)
    lines = ["Realized against target NFE of the targeted rows (the threshold is the budget, no search on tuning "
             "pairs: SenCache's planner, the static schedules): mean error over the held-out videos, and the "
             "per-video spread.", "",
             "| method | target NFE | realized NFE (mean ± std) | mean error | per-video min .. max |",
             "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (order.index(r["method"]), -r["budget"])):
        target = _target(r, steps)
        nfe = [sum(t) for t in r["timelines"]]
        lines.append(f"| {METHODS[r['method']].label} | {target:g} | {statistics.fmean(nfe):.2f} ± "
                     f"{statistics.stdev(nfe) if len(nfe) > 1 else 0.0:.2f} | {statistics.fmean(nfe) - target:+.2f} | "
                     f"{min(nfe):g} .. {max(nfe):g} |")
    return "\n".join(lines) + "\n"


def plot_targets(record: dict, out: Path) -> None:
    """realized_vs_target.png: each video's realized NFE against the target, per targeted row."""
    from sencache.plotting import pyplot

    plt = pyplot()
    steps = record["settings"]["steps"]
    rows = _targeted(record)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    targets = sorted({_target(r, steps) for r in rows})
    ax.plot([targets[0] - 2, targets[-1] + 2], [targets[0] - 2, targets[-1] + 2], color="grey", lw=1,
            label="realized = target")
    for k, method in enumerate(methods):
        shift = (k - (len(methods) - 1) / 2) * 0.6  # side by side at each target
        for r in (r for r in rows if r["method"] == method):
            nfe = [sum(t) for t in r["timelines"]]
            target = _target(r, steps)
            ax.scatter([target + shift] * len(nfe), nfe, s=12, alpha=0.5, color=f"C{k}",
                       label=METHODS[method].label if r["budget"] == max(x["budget"] for x in rows
                                                                          if x["method"] == method) else None)
            ax.errorbar(target + shift, statistics.fmean(nfe), yerr=statistics.stdev(nfe) if len(nfe) > 1 else 0,
                        color=f"C{k}", marker="_", markersize=14, capsize=4)
    ax.set(xlabel=f"target NFE (of {steps})", ylabel="realized NFE per held-out video",
           title="Speed target: realized against target NFE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "realized_vs_target.png", dpi=110)
    plt.close(fig)


def plot_estimators(record: dict, out: Path) -> None:
    """estimators.png: Jx and Jt of both estimators over t, with the chained profile's sample spread."""
    from sencache.plotting import pyplot

    plt = pyplot()
    a, b = record["profile"], record["profile_central"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, name in zip(axes, ("jx", "jt"), strict=True):
        t, mean, std = a["timesteps"], a[name], a[f"{name}_std"]
        ax.fill_between(t, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)], alpha=0.25, label="chained ± sample std")
        ax.plot(t, mean, marker=".", label="chained (default, 1.5x)")
        ax.plot(b["timesteps"], b[name], marker="x", linestyle="--", label="central (2x)")
        ax.set(xlabel="timestep t (1000 = noise)", ylabel=name.capitalize(), yscale="log")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("SenCache profiles of the reference model from the two calibration estimators")
    fig.tight_layout()
    fig.savefig(out / "estimators.png", dpi=110)
    plt.close(fig)


def plot_all(record: dict, out: Path) -> None:
    """quality_vs_nfe.png, sensitivity_profile.png, output_change.png, timelines.png."""
    from sencache.plotting import pyplot

    plt = pyplot()

    steps = record["settings"]["steps"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method in record["settings"]["methods"]:
        rows = sorted((r for r in record["results"] if r["method"] == method), key=lambda r: r["nfe"]["mean"])
        x = [r["nfe"]["mean"] for r in rows]
        for ax, key in zip(axes, ("psnr", "ssim", "rel_l2"), strict=True):
            ax.errorbar(x, [r[key]["mean"] for r in rows], yerr=[r[key]["std"] for r in rows], marker="o",
                        capsize=3, label=METHODS[method].label)
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
        ax.set(ylabel="sample", title=f"{METHODS[method].label}: NFE {r['nfe']['mean']:.1f} (black: computed)")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out / "timelines.png", dpi=110)
    plt.close(fig)


def render(out_dir: str | Path, readme: str | Path | None = None) -> str:
    """Rewrite ``quality.md`` and the plots from ``out_dir/quality.json``; put the table between the
    :data:`README_MARKERS` of ``readme`` when given. Returns the table."""
    out = Path(out_dir)
    record = json.loads((out / "quality.json").read_text())
    table = markdown_table(record)
    planned = paired_table(record, "sencache_target", methods=("sencache_planned",))  # schedule against schedule
    forecast = paired_table(record, "sencache_forecast", methods=("sencache_planned_forecast",))  # both forecasting
    pairs = (("sencache", "sencache_planned"), ("sencache_forecast", "sencache_planned_forecast"))
    matched = [matched_table(record, ref, method) for ref, method in pairs]  # exactly the same NFE on every video
    extra = [part for part in (paired_table(record), planned, forecast, *matched, target_table(record),
                               estimator_table(record)) if part is not None]
    (out / "quality.md").write_text("\n".join([table, *extra]))
    plot_all(record, out)
    if estimator_table(record) is not None:
        plot_estimators(record, out)
    if _targeted(record):
        plot_targets(record, out)
    if readme is not None:
        fill_readme(readme, README_MARKERS, table)
    return table
