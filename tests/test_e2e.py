"""benchmarks/e2e.py in its CPU smoke configuration: every method runs, the skip pattern has the NFE it should, and
the table is regenerated from the results file (into a README block too). Timings on the CPU are not checked."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import e2e  # noqa: E402

STEPS = 4


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "e2e.json"
    e2e.main(["--smoke", "--steps", str(STEPS), "--repeats", "1", "--out", str(out)])
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
    e2e.main(["--smoke", "--steps", "2", "--repeats", "1", "--out", str(out)])
    first = json.loads(out.read_text())
    only_wan = {k: v for k, v in e2e.SMOKE_MODELS.items() if k.startswith("wan")}
    out.write_text(json.dumps({**first, "results": {k: first["results"][k] for k in first["results"]
                                                    if k not in only_wan}}))
    e2e.SMOKE_MODELS, saved = only_wan, e2e.SMOKE_MODELS
    try:
        e2e.main(["--smoke", "--steps", "2", "--repeats", "1", "--out", str(out), "--append"])
        with pytest.raises(SystemExit, match="steps 2 there, 3 now"):
            e2e.main(["--smoke", "--steps", "3", "--repeats", "1", "--out", str(out), "--append"])
    finally:
        e2e.SMOKE_MODELS = saved
    record = json.loads(out.read_text())
    assert set(record["results"]) == set(first["results"]) and " + " in record["command"]
