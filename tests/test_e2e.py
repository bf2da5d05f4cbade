"""benchmarks/e2e.py in its CPU smoke configuration: every method runs, the skip pattern has the NFE it should, the
methods alternate round by round and each row's ratios are paired with its baseline's loops of the same round, the
residual cache is accounted, rows that never skip (regional compilation and cache-dit's DBCache included) give the
uncached output, and the table is regenerated from the results file (into a README block too). Timings on the CPU are
not checked."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import e2e  # noqa: E402
import e2e_methods  # noqa: E402

STEPS = 4
EAGER_ROWS = ("uncached eager", "SenCache eps=0 eager", "SenCache pattern eager", "FirstBlockCache thr=0 eager",
              "MagCache thr=0 eager")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "e2e.json"
    e2e.main(["--smoke", "--steps", str(STEPS), "--repeats", "1", "--out", str(out), "--methods", ",".join(EAGER_ROWS)])
    return out, json.loads(out.read_text())


def test_every_model_runs_every_method_with_the_expected_nfe(smoke):
    _, record = smoke
    assert set(record["results"]) == set(e2e.SMOKE_MODELS)
    for model, rows in record["results"].items():
        assert set(rows) == {"uncached eager", "SenCache eps=0 eager", "SenCache pattern eager",
                             "FirstBlockCache thr=0 eager", "MagCache thr=0 eager"}
        assert all(r["s_per_step"] > 0 and r["host_syncs_per_step"] is None for r in rows.values())
        assert rows["SenCache eps=0 eager"]["nfe"] == STEPS  # eps=0 computes every step
        # forced first step, then K=3 skips; CogVideoX and LTX also force the last step
        want_nfe = 1 if model.startswith("wan") else 2
        pattern = rows["SenCache pattern eager"]
        assert pattern["nfe"] == want_nfe and pattern["mode"] == "eager"
        assert pattern["ideal_speedup"] == STEPS / want_nfe
        assert pattern["fraction_of_ideal"] == pytest.approx(pattern["speedup"] / pattern["ideal_speedup"])
        for name in ("SenCache eps=0 eager", "FirstBlockCache thr=0 eager", "MagCache thr=0 eager"):
            assert rows[name]["vs_uncached"] == pytest.approx(
                rows[name]["s_per_step"] / rows["uncached eager"]["s_per_step"] - 1)


def test_table_is_regenerated_from_the_results_file(smoke, tmp_path, capsys):
    out, record = smoke
    table = out.with_suffix(".md").read_text()
    assert table == e2e.markdown_table(record)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == sum(len(r) for r in record["results"].values())
    readme = tmp_path / "README.md"
    start, end = e2e.README_MARKERS
    readme.write_text(f"intro\n{start}\nold table\n{end}\noutro\n")
    e2e.main(["--render", str(out), "--readme", str(readme)])
    text = readme.read_text()
    assert "old table" not in text and table in text and text.startswith("intro\n") and text.endswith(f"{end}\noutro\n")
    assert table in capsys.readouterr().out


def test_append_adds_models_measured_with_the_same_settings(tmp_path):
    out = tmp_path / "e2e.json"
    one = ["--methods", "SenCache eps=0 eager"]  # and its baseline
    e2e.main(["--smoke", "--steps", "2", "--repeats", "1", "--out", str(out), *one])
    first = json.loads(out.read_text())
    only_wan = {k: v for k, v in e2e.SMOKE_MODELS.items() if k.startswith("wan")}
    out.write_text(json.dumps({**first, "results": {k: first["results"][k] for k in first["results"]
                                                    if k not in only_wan}}))
    e2e.SMOKE_MODELS, saved = only_wan, e2e.SMOKE_MODELS
    try:
        e2e.main(["--smoke", "--steps", "2", "--repeats", "1", "--out", str(out), "--append", *one])
        with pytest.raises(SystemExit, match="steps 2 there, 3 now"):
            e2e.main(["--smoke", "--steps", "3", "--repeats", "1", "--out", str(out), "--append", *one])
    finally:
        e2e.SMOKE_MODELS = saved
    record = json.loads(out.read_text())
    assert set(record["results"]) == set(first["results"]) and " + " in record["command"]


ALTERNATING = ("SenCache pattern eager", "DBCache thr=0 eager", "SenCache eps=0 regional")


def test_methods_alternate_and_ratios_are_paired_within_rounds(tmp_path):
    assert e2e_methods.cache_dit_available()  # pinned in requirements-dev.txt
    out = tmp_path / "e2e.json"
    e2e.main(["--smoke", "--models", "wan tiny", "--steps", "2", "--repeats", "3", "--out", str(out),
              "--methods", ",".join(ALTERNATING)])
    record = json.loads(out.read_text())
    rows = record["results"]["wan tiny"]
    names = ["uncached eager", "SenCache pattern eager", "DBCache thr=0 eager", "uncached regional",
             "SenCache eps=0 regional"]  # the baselines joined the rows asked for, in the methods' order
    assert list(rows) == names
    assert record["order"]["wan tiny"] == [names, names[::-1], names]  # forward, backward, forward
    for row in rows.values():
        assert len(row["times"]) == 3 and row["peak_bytes"] is None  # no peak memory off CUDA
        if row["baseline"] is None:
            assert "vs_uncached" not in row
            continue
        ratios = [t / b for t, b in zip(row["times"], rows[row["baseline"]]["times"], strict=True)]
        assert row["vs_uncached"] == pytest.approx(statistics.median(ratios) - 1)
        assert row["vs_interval"] == pytest.approx([min(ratios) - 1, max(ratios) - 1])
    assert rows["SenCache eps=0 regional"]["baseline"] == "uncached regional"
    pattern = rows["SenCache pattern eager"]
    assert pattern["nfe"] == 1 and pattern["ideal_speedup"] == 2
    base = rows["uncached eager"]["times"]
    speedups = [b / t for t, b in zip(pattern["times"], base, strict=True)]
    assert pattern["speedup"] == pytest.approx(statistics.median(speedups))
    # the residual cache: a [1, tokens, heads * head_dim] float32 residual for each of cond and uncond
    spec = e2e.SMOKE_MODELS["wan tiny"]
    _, _, f, h, w = spec["latent"]
    tokens = f * (h // 2) * (w // 2)
    width = spec["config"]["num_attention_heads"] * spec["config"]["attention_head_dim"]
    for name in ("SenCache pattern eager", "SenCache eps=0 regional"):
        assert rows[name]["residual_bytes"] == 2 * tokens * width * 4
    # rows that never skip give the uncached output bit for bit on the CPU; the pattern skips
    assert all(rows[n]["max_abs_diff"] == 0 for n in names if n != "SenCache pattern eager")
    assert pattern["max_abs_diff"] > 0
    assert rows["SenCache eps=0 regional"]["nfe"] == 2 and rows["SenCache eps=0 regional"]["mode"] == "eager"
    assert "DBCache thr=0 eager" in e2e.markdown_table(record)


def test_derive_pairs_rounds_and_accounts_memory():
    rows = {"uncached graph": {"baseline": None, "times": [2.0, 4.0, 2.2], "peak_bytes": 1000},
            "SenCache pattern graph": {"baseline": "uncached graph", "pattern": True, "nfe": 2,
                                       "times": [1.0, 1.0, 1.0], "peak_bytes": 1600, "residual_bytes": 500}}
    e2e.derive(rows, steps=6)
    row = rows["SenCache pattern graph"]
    assert rows["uncached graph"]["s_per_step"] == pytest.approx(2.2 / 6)
    assert row["vs_uncached"] == pytest.approx(1 / 2.2 - 1) and row["vs_interval"] == pytest.approx([1 / 4 - 1, -0.5])
    assert row["speedup"] == pytest.approx(2.2) and row["ideal_speedup"] == 3
    assert row["fraction_of_ideal"] == pytest.approx(2.2 / 3)
    assert row["memory_overhead_bytes"] == 600 and row["overhead_vs_residual"] == pytest.approx(1.2)
    assert not math.isnan(row["speedup_interval"][0]) and row["speedup_interval"] == pytest.approx([2.0, 4.0])


def test_max_seconds_stops_the_rounds_after_the_first(tmp_path):
    out = tmp_path / "e2e.json"
    e2e.main(["--smoke", "--models", "wan tiny", "--steps", "2", "--repeats", "3", "--max-seconds", "0",
              "--out", str(out), "--methods", "uncached eager"])
    record = json.loads(out.read_text())
    assert record["order"]["wan tiny"] == [["uncached eager"]]
    assert len(record["results"]["wan tiny"]["uncached eager"]["times"]) == 1
    with pytest.raises(SystemExit, match="unknown"):
        e2e.main(["--smoke", "--methods", "SenCache eps=1 eager", "--out", str(out)])

