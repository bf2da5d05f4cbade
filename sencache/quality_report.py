"""The quality benchmark's report, from its record (``quality.json``): the markdown table, the plots and the README
block. ``sencache quality --render-only`` redraws them from a committed record."""

from __future__ import annotations

import json
from pathlib import Path

from sencache.quality_methods import METHODS
from sencache.records import fill_readme, table_markers

__all__ = ["README_MARKERS", "markdown_table", "plot_all", "render"]

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
    (out / "quality.md").write_text(table)
    plot_all(record, out)
    if readme is not None:
        fill_readme(readme, README_MARKERS, table)
    return table
