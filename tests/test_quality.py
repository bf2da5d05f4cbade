"""Quality metrics, the TeaCache baseline, MagCache's calibration and the quality harness (smoke configuration) on the
reference model."""

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from sencache.metrics import psnr, rel_l2, ssim
from sencache.quality import Pair, QualitySettings, generate, main, make_pairs
from sencache.quality_methods import METHODS, applied, magcache_ratios
from sencache.quality_report import estimator_table, matched_table, paired_table, target_table
from sencache.reference.model import load_reference_pipeline


def _ssim_direct(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> float:
    """SSIM of one [H, W] window position (image as large as the window), from the definition, in float64."""
    n = a.shape[-1]
    x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    w = g[:, None] * g[None, :]
    w = w / w.sum()
    a, b = a.double(), b.double()
    ma, mb = (w * a).sum(), (w * b).sum()
    va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
    cov = (w * (a - ma) * (b - mb)).sum()
    c1, c2 = 0.01**2, 0.03**2
    return float(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))


def test_metrics():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 11, 11, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    a64 = a.double()  # a float32 a + 0.1 would not differ by exactly 0.1
    assert psnr(a, a) == math.inf and abs(psnr(a64, a64 + 0.1) - 20.0) < 1e-9
    assert rel_l2(a, a) == 0 and abs(rel_l2(2 * a, a) - 1.0) < 1e-12
    assert abs(ssim(a, a) - 1.0) < 1e-12
    direct = sum(_ssim_direct(a[f, c], b[f, c]) for f in range(3) for c in range(3)) / 9
    assert abs(ssim(a, b) - direct) < 1e-12
    c = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert ssim(a, c) < ssim(a, b) < 1
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, b[:, :2])


@pytest.fixture(scope="module")
def pipe():
    return load_reference_pipeline()


def test_generate_counts_block_stack_evaluations(pipe):
    g = generate(pipe, Pair("red circle grow", 1), steps=5)
    assert g.nfe == 5 and g.timeline == [1.0] * 5 and g.video.shape == (17, 3, 32, 32)
    assert make_pairs(3, 100) == [Pair("red circle left-right", 100), Pair("red square rotate", 101),
                                  Pair("green circle grow", 102)]


@pytest.mark.slow
def test_teacache(pipe):
    from sencache.teacache import TeaCacheConfig, apply_teacache, fit_coefficients, remove_teacache

    steps, pair = 6, Pair("blue square left-right", 3)
    coeffs = fit_coefficients(pipe, [{"prompt": pair.condition, "num_inference_steps": steps, "output_type": "latent",
                                      "generator": torch.Generator().manual_seed(0)}])
    assert len(coeffs) == 5 and all(math.isfinite(c) for c in coeffs)
    ref = generate(pipe, pair, steps)
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=0.0, coefficients=coeffs, num_inference_steps=steps))
    try:
        same = generate(pipe, pair, steps)
    finally:
        remove_teacache(pipe.transformer)
    assert same.nfe == steps and torch.equal(same.video, ref.video)
    apply_teacache(pipe.transformer, TeaCacheConfig(threshold=1e9, coefficients=coeffs, num_inference_steps=steps))
    try:
        lazy = generate(pipe, pair, steps)
        lazy2 = generate(pipe, pair, steps)  # state wraps around between calls
    finally:
        remove_teacache(pipe.transformer)
    assert lazy.nfe == 2 and lazy.timeline == [1, 0, 0, 0, 0, 1] and torch.equal(lazy.video, lazy2.video)
    assert not torch.equal(lazy.video, ref.video)
    assert torch.equal(generate(pipe, pair, steps).video, ref.video)  # removed cleanly
    with pytest.raises(ValueError, match="WanTransformer3DModel"):
        apply_teacache(torch.nn.Linear(2, 2), TeaCacheConfig(0.1, coeffs))


def test_magcache_ratios_are_the_block_stack_residual_norm_ratios(pipe):
    """The ratios read from MagCache's hook state equal ratios computed here from the block stack's residuals: per
    CFG context, 1 at the first step, then the mean over tokens of ||r_k|| / (||r_(k-1)|| + 1e-8); averaged over the
    pairs and both contexts."""
    steps, pairs = 4, [Pair("red circle grow", 1), Pair("blue square rotate", 2)]
    blocks, inputs, residuals = pipe.transformer.blocks, [], []

    def keep_input(_m, args, kwargs):
        inputs.append(args[0] if args else kwargs["hidden_states"])

    def keep_residual(_m, _args, out):
        residuals.append((out[0] if isinstance(out, tuple) else out).float() - inputs[-1].float())

    handles = [blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True),
               blocks[-1].register_forward_hook(keep_residual)]
    try:
        ratios = magcache_ratios(pipe, pairs, steps)
    finally:
        for h in handles:
            h.remove()
    assert len(residuals) == 2 * steps * len(pairs)  # cond and uncond calls alternate, every step computed
    runs = []
    for i in range(len(pairs)):
        calls = residuals[2 * steps * i: 2 * steps * (i + 1)]
        for context in (calls[0::2], calls[1::2]):
            norms = [torch.linalg.norm(r, dim=-1) for r in context]
            runs.append([1.0] + [float((norms[k] / (norms[k - 1] + 1e-8)).mean()) for k in range(1, steps)])
    assert runs[0] != runs[1]  # the contexts differ, so averaging over both is checked
    assert ratios == torch.tensor(runs, dtype=torch.float64).mean(0).tolist()


def test_method_table(pipe):
    assert list(METHODS) == ["sencache", "sencache_central", "sencache_forecast", "sencache_target",
                             "sencache_planned", "sencache_planned_forecast", "magcache", "teacache", "fbc", "dbcache",
                             "dbcache_ts", "dbcache_mask", "taylorseer"]
    assert [m.record_key for m in METHODS.values()] == ["profile", "profile_central", None, None, None, None,
                                                         "mag_ratios", "tea_coefficients", None, None, None, None, None]
    assert QualitySettings().methods == ("sencache", "magcache", "teacache", "fbc")  # the comparison row: opt-in
    pairs = [Pair("red circle grow", 3), Pair("blue square rotate", 4)]
    chained, central = (METHODS[name].calibrate(pipe, pairs, 4, False) for name in ("sencache", "sencache_central"))
    assert (chained.metadata["estimator"], central.metadata["estimator"]) == ("chained", "central")
    assert torch.equal(chained.jx, central.jx) and not torch.equal(chained.jt, central.jt)  # Jt taken elsewhere
    record = METHODS["sencache_central"].to_record(central)
    assert record["estimator"] == "central" and record["jx_std"] == central.jx_samples.double().std(0).tolist()
    assert all(0 < m.search_range[0] < m.search_range[1] for m in METHODS.values())
    with pytest.raises(ValueError, match="unknown method .nope.; choose from sencache, sencache_central, sencache_for"):
        with applied(pipe, "nope", 0.1, {}, 4):
            pass
    ref = generate(pipe, Pair("red circle grow", 1), steps=4)
    with applied(pipe, "fbc", 1e9, {}, 4):  # FirstBlockCache at a threshold that skips all it can
        assert generate(pipe, Pair("red circle grow", 1), steps=4).nfe == 1
    assert torch.equal(generate(pipe, Pair("red circle grow", 1), steps=4).video, ref.video)  # removed on exit


@pytest.mark.slow
def test_target_methods_share_the_sencache_profile(pipe):
    """The planner's rows (issue 18): their threshold is the budget (no search), on the sencache row's profile."""
    from sencache.quality_methods import calibrate_methods

    cal = calibrate_methods(pipe, [Pair("red circle grow", 3)], 4, ["sencache_target", "sencache_planned"],
                            progress=False)
    assert list(cal) == ["sencache"]  # one profile, shared
    for name in ("sencache_target", "sencache_planned", "sencache_planned_forecast"):
        assert METHODS[name].targeted and METHODS[name].shares == "sencache"
        with applied(pipe, name, 0.5, cal, 4):
            config = pipe.transformer._diffusers_hook.get_hook("sencache").config
            assert (config.forecast, config.plan.cost) == (("linear", "forecast") if name.endswith("forecast") else
                                                           ("reuse", "measured")), name
            g = generate(pipe, Pair("green circle grow", 5), steps=4)
        assert g.nfe == 2, (name, g.timeline)
    # the forecast row: SenCache's decision on the same profile, a first-order forecast on its skipped steps
    assert METHODS["sencache_forecast"].shares == "sencache" and not METHODS["sencache_forecast"].targeted
    gens = {}
    for name in ("sencache", "sencache_forecast"):
        with applied(pipe, name, 20.0, cal, 4):
            assert pipe.transformer._diffusers_hook.get_hook("sencache").config.forecast == (
                "linear" if name == "sencache_forecast" else "reuse")
            gens[name] = generate(pipe, Pair("green circle grow", 5), steps=8)
    # at most K=3 skips in a row: steps 5 and 6 skip after two computed steps (0 and 4), so they are extrapolated
    assert gens["sencache_forecast"].timeline[:7] == gens["sencache"].timeline[:7] == [1, 0, 0, 0, 1, 0, 0]
    assert not torch.equal(gens["sencache_forecast"].video, gens["sencache"].video)


@pytest.mark.slow
def test_quality_harness_smoke(tmp_path):
    argv = ["--steps", "6", "--budgets", "0.5", "--eval-pairs", "2", "--tune-pairs", "1", "--calib-pairs", "1",
            "--search-iters", "2", "--device", "cpu", "--out", str(tmp_path)]
    main(argv)  # the CLI: `sencache quality` / `python benchmarks/quality.py`
    record = json.loads((tmp_path / "quality.json").read_text())
    assert record["settings"]["steps"] == 6 and record["command"] == "python benchmarks/quality.py " + " ".join(argv)
    assert len(record["uncached"]["digest"]) == 16 and int(record["uncached"]["digest"], 16) >= 0  # merge's check
    for name in ("quality.json", "quality.md", "quality_vs_nfe.png", "sensitivity_profile.png", "output_change.png",
                 "timelines.png"):
        assert (tmp_path / name).is_file(), name
    assert {r["method"] for r in record["results"]} == {"sencache", "magcache", "teacache", "fbc"}
    for r in record["results"]:
        assert 1 <= r["nfe"]["mean"] <= 6 and len(r["timelines"]) == 2 and len(r["timelines"][0]) == 6
        assert r["psnr"]["mean"] > 0 and 0 < r["ssim"]["mean"] <= 1 and r["rel_l2"]["mean"] >= 0
        for metric, values in r["per_pair"].items():  # the summaries are of the per-pair values, in pair order
            assert len(values) == 2 and r[metric]["mean"] == pytest.approx(sum(values) / 2, rel=1e-12)
        # the chosen threshold is one of the searched ones, with the NFE closest to the budget on the tuning pair
        tried = dict(map(tuple, record["threshold_search"][r["method"]]))
        assert r["threshold"] in tried
        assert abs(tried[r["threshold"]] - 0.5) == min(abs(v - 0.5) for v in tried.values())
    assert len(record["mag_ratios"]) == 6 and len(record["tea_coefficients"]) == 5
    assert len(record["consecutive_output_mae"]) == 5 and len(record["profile"]["jx"]) == 6
    assert "| 50% | SenCache |" in (tmp_path / "quality.md").read_text()


def test_render_fills_readme_block(tmp_path):
    from sencache.quality_report import README_MARKERS, render

    record = {"settings": {"steps": 4, "methods": ["sencache"], "budgets": [0.5]}, "eval_pairs": [{}],
              "uncached": {"wall_s_mean": 1.0}, "device": "cpu", "torch_threads": 1, "profile": None,
              "consecutive_output_mae": [0.3, 0.2, 0.1],
              "results": [{"method": "sencache", "budget": 0.5, "threshold": 0.1, "nfe": {"mean": 2.0, "std": 0.0},
                           **{k: {"mean": 0.5, "std": 0.1} for k in ("psnr", "ssim", "rel_l2", "wall_s")},
                           "timelines": [[1, 0, 1, 0]]}]}
    (tmp_path / "quality.json").write_text(json.dumps(record))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_MARKERS[0]}\nold table\n{README_MARKERS[1]}\nafter\n")
    table = render(tmp_path, readme)
    text = readme.read_text()
    assert "old table" not in text and table in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| 50% | SenCache | 0.1 | 2.0 ± 0.0 |" in table
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="quality-table"):
        render(tmp_path, readme)


def test_runtime_does_not_import_the_quality_harness():
    """Only the harness itself and the CLI's dispatch import sencache.quality: not the demo, the reference model, the
    other sencache modules or benchmarks/e2e.py."""
    root = Path(__file__).resolve().parents[1]
    allowed = {root / "sencache" / "quality.py", root / "sencache" / "cli.py"}
    files = [*(root / "sencache").rglob("*.py"), root / "benchmarks" / "e2e.py"]
    importers = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "sencache.quality" or n.startswith("sencache.quality.") for n in names):
                importers.append(path)
    assert len(files) > 20 and root / "sencache" / "cli.py" in importers
    assert set(importers) <= allowed, sorted(str(p.relative_to(root)) for p in set(importers) - allowed)


def test_paired_and_estimator_tables():
    def row(method, psnr, nfe):
        return {"method": method, "budget": 0.5, "nfe": {"mean": nfe}, "per_pair": {
            "psnr": psnr, "ssim": [0.9, 0.8, 0.7], "rel_l2": [0.1, 0.2, 0.3]}}
    prof = {"timesteps": [900.0, 500.0, 100.0], "jx": [1.0, 2.0, 3.0], "jt": [0.5, 0.5, 0.5],
            "jx_std": [0.1, 0.1, 0.0], "jt_std": [0.1, 0.2, 0.4]}
    record = {"results": [row("sencache", [30.0, 32.0, 34.0], 25.0), row("magcache", [31.0, 31.0, 36.0], 25.0)],
              "profile": prof, "profile_central": dict(prof, jt=[0.55, 0.9, 0.5])}
    paired = paired_table(record).splitlines()
    # differences 1, -1, 2: mean 2/3, standard error stdev/sqrt(3) = 0.8819; better on 2 of 3 pairs
    assert paired[-1] == ("| 50% | MagCache (diffusers) | 25.0 / 25.0 | +0.67 ± 0.88 | +0.0000 ± 0.0000 | "
                          "+0.0000 ± 0.0000 | 2 of 3 |")
    assert paired_table({"results": [row("sencache", [30.0, 31.0, 32.0], 25.0)]}) is None
    old = {k: v for k, v in row("magcache", [31.0, 31.0, 36.0], 25.0).items() if k != "per_pair"}
    assert paired_table({"results": [row("sencache", [30.0, 32.0, 34.0], 25.0), old]}) is None  # no per-pair values
    est = estimator_table(record).splitlines()
    assert est[-2] == "| Jx | 0.000 | 0.000 | 0.000 | 0 of 3 |"
    assert est[-1] == "| Jt | 0.500 | 2.000 | 2.000 | 1 of 3 |"  # |Δ|/std = 0.5, 2.0, 0
    assert estimator_table(dict(record, profile_central=None)) is None


def test_target_table_and_paired_table_of_chosen_methods():
    def row(method, budget, timelines, psnr):
        return {"method": method, "budget": budget, "nfe": {"mean": 0.0}, "timelines": timelines,
                "per_pair": {"psnr": psnr, "ssim": [0.9, 0.9], "rel_l2": [0.1, 0.1]}}
    record = {"settings": {"steps": 4}, "results": [
        row("sencache", 0.5, [[1, 0, 1, 0], [1, 1, 1, 0]], [30.0, 30.0]),
        row("sencache_target", 0.5, [[1, 0, 1, 0], [1, 0.5, 1, 0]], [31.0, 29.0]),  # realized 2 and 2.5
        row("sencache_planned", 0.5, [[1, 1, 1, 0], [1, 1, 1, 1]], [32.0, 30.0])]}  # realized 3 and 4
    lines = target_table(record).splitlines()
    assert lines[-2] == "| SenCache (target NFE, fixed schedule) | 2 | 2.25 ± 0.35 | +0.25 | 2 .. 2.5 |"
    assert lines[-1] == "| SenCache (target NFE, planned eps(t)) | 2 | 3.50 ± 0.71 | +1.50 | 3 .. 4 |"
    assert target_table({"settings": {"steps": 4}, "results": [record["results"][0]]}) is None
    only = paired_table(record, "sencache_target", methods=("sencache_planned",)).splitlines()
    assert len(only) == 5 and only[-1].startswith("| 50% | SenCache (target NFE, planned eps(t)) | 0.0 / 0.0 | "
                                                   "+1.00 ± 0.00 |")  # differences +1, +1


def test_matched_table_pairs_each_video_with_the_row_of_its_nfe():
    def row(method, budget, timelines, psnr):
        return {"method": method, "budget": budget, "timelines": timelines,
                "per_pair": {"psnr": psnr, "ssim": [0.9, 0.9, 0.9], "rel_l2": [0.1, 0.1, 0.1]}}
    fixed = row("sencache", 0.5, [[1, 0, 1, 0], [1, 1, 1, 0], [1, 0, 1, 0]], [30.0, 30.0, 30.0])  # NFE 2, 3, 2
    planned = [row("sencache_planned", 0.5, [[1, 0, 1, 0]] * 3, [31.0, 25.0, 32.0]),  # NFE 2 on every video
               row("sencache_planned", 0.75, [[1, 1, 1, 0]] * 3, [40.0, 34.0, 40.0])]  # NFE 3 on every video
    record = {"settings": {"steps": 4}, "results": [fixed, *planned]}
    lines = matched_table(record, "sencache", "sencache_planned").splitlines()
    # videos 0 and 2 from the 0.5 row (+1, +2), video 1 from the 0.75 row (+4): mean 7/3, se stdev/sqrt(3)
    assert lines[-1] == ("| 50% | 2.33 | 2: 2, 3: 1 | +2.33 ± 0.88 | +0.0000 ± 0.0000 | +0.0000 ± 0.0000 | "
                         "3 of 3 |")
    record["results"] = [fixed, planned[0]]  # video 1 (NFE 3) has no planned row of its NFE: left out, counted
    lines = matched_table(record, "sencache", "sencache_planned").splitlines()
    assert lines[-1] == ("| 50% | 2.00 | 2: 2 (1 of 3 videos unmatched) | +1.50 ± 0.50 | +0.0000 ± 0.0000 | "
                         "+0.0000 ± 0.0000 | 2 of 2 |")
    record["results"] = [fixed, planned[1]]
    assert matched_table(record, "sencache", "sencache_planned").splitlines()[-1].startswith(
        "| 50% | - | none (1 of 3 videos matched) |")
    assert matched_table({"settings": {"steps": 4}, "results": [fixed]}, "sencache", "sencache_planned") is None
    before = {k: v for k, v in planned[0].items() if k != "per_pair"}  # a record made before per-pair values
    assert matched_table({"settings": {"steps": 4}, "results": [fixed, before]}, "sencache", "sencache_planned") is None


def test_merge_records_of_runs_against_the_same_references(tmp_path):
    from sencache.quality import merge_records

    def record(methods, digest="abc", pairs=({"condition": "c", "seed": 1},)):
        return {"settings": {"steps": 4, "methods": list(methods), "budgets": [0.5]}, "eval_pairs": list(pairs),
                "uncached": {"wall_s_mean": 1.0, "digest": digest}, "command": "run " + methods[0],
                "results": [{"method": m, "budget": 0.5} for m in methods],
                "threshold_search": {m: [[0.1, 0.5]] for m in methods},
                "profile": {"jx": [1.0]} if "sencache" in methods else None, "mag_ratios": None}
    merged = merge_records([record(["sencache"]), record(["magcache", "fbc"])])
    assert merged["settings"]["methods"] == ["sencache", "magcache", "fbc"]
    assert [r["method"] for r in merged["results"]] == ["sencache", "magcache", "fbc"]
    assert set(merged["threshold_search"]) == {"sencache", "magcache", "fbc"}
    assert merged["profile"] == {"jx": [1.0]} and merged["command"] == "run sencache && run magcache"
    with pytest.raises(ValueError, match="different uncached digest"):
        merge_records([record(["sencache"]), record(["fbc"], digest="abd")])
    with pytest.raises(ValueError, match="different held-out pairs"):
        merge_records([record(["sencache"]), record(["fbc"], pairs=({"condition": "c", "seed": 2},))])
    with pytest.raises(ValueError, match=r"\['sencache'\] are in more than one"):
        merge_records([record(["sencache"]), record(["sencache"])])
    rerun = record(["sencache"])
    rerun["results"][0]["threshold"] = 0.2  # tells the rerun's row from the first run's
    merged = merge_records([record(["sencache", "fbc"]), rerun], replace=True)  # the rerun's rows replace the first's
    assert merged["settings"]["methods"] == ["fbc", "sencache"]
    assert merged["results"] == [{"method": "fbc", "budget": 0.5}, {"method": "sencache", "budget": 0.5,
                                                                   "threshold": 0.2}]
    other = record(["sencache"])  # the same method at another budget: more points of its curve, no rerun
    other["results"][0]["budget"], other["threshold_search"]["sencache"] = 0.4, [[0.05, 0.4]]
    merged = merge_records([record(["sencache", "fbc"]), other])
    assert merged["settings"]["methods"] == ["sencache", "fbc"]
    assert [(r["method"], r["budget"]) for r in merged["results"]] == [("sencache", 0.5), ("fbc", 0.5),
                                                                       ("sencache", 0.4)]
    assert merged["threshold_search"]["sencache"] == [[0.05, 0.4], [0.1, 0.5]]
    old = record(["fbc"])
    del old["uncached"]["digest"]  # a record from before the digest: not mergeable
    with pytest.raises(ValueError, match="different uncached digest"):
        merge_records([record(["sencache"]), old])
