"""benchmarks/host_cost.py and its host_cost_*.py modules at a few rounds of a few steps: the record's structure,
that every method computed every step, that the paired overheads are taken against the uncached call of the same
round, and that a cache which does skip is caught. Timings themselves are not checked (the CPU is shared)."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from diffusers import FirstBlockCacheConfig

import sencache
from sencache.offline_pipelines import build_pipeline, call_kwargs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import host_cost  # noqa: E402
import host_cost_measure  # noqa: E402
import host_cost_report  # noqa: E402

ROUNDS, STEPS = 3, 4


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    out = tmp_path_factory.mktemp("host_cost") / "host_cost.json"
    threads = torch.get_num_threads()
    returned = host_cost.run(out, rounds=ROUNDS, steps=STEPS, warmup=1, profile_calls=1, component_calls=20,
                             command="test")
    assert torch.get_num_threads() == threads  # run() measures with 1 thread and restores the caller's setting
    record = json.loads(out.read_text())
    assert record == json.loads(json.dumps(returned))
    return out, record


def test_record_describes_the_run(measured):
    _, record = measured
    assert record["torch_threads"] == 1 and record["command"] == "test"
    assert set(record["versions"]) >= {"torch", "diffusers", "python"}
    assert record["versions"]["torch"] == torch.__version__
    assert record["cpu"] and record["date"]
    s = record["settings"]
    assert (s["rounds"], s["steps"], s["warmup_rounds"], s["transformer_calls_per_step"]) == (ROUNDS, STEPS, 1, 2)
    assert record["methods"] == list(host_cost_measure.METHODS) and record["baseline"] == "uncached"


def test_rounds_interleave_every_method_in_rotated_order(measured):
    _, record = measured
    order = record["order"]
    assert len(order) == ROUNDS
    assert all(sorted(o) == sorted(host_cost_measure.METHODS) for o in order)
    assert len({o[0] for o in order}) == ROUNDS  # a different method opens each round
    for method in host_cost_measure.METHODS:
        raw = record["raw"][method]
        for key in host_cost_measure.FIGURES:
            assert len(raw[key]) == ROUNDS and all(math.isfinite(v) and v > 0 for v in raw[key]), (method, key)


def test_every_method_ran_every_step_of_both_cfg_branches(measured):
    _, record = measured
    for method in host_cost_measure.METHODS:
        raw = record["raw"][method]
        assert raw["computed_steps"] == [STEPS] * ROUNDS, method
        assert raw["last_block_runs"] == [2 * STEPS] * ROUNDS, method
        assert record["summary"][method]["computed_steps"] == [STEPS]


def test_overheads_are_paired_against_uncached(measured):
    _, record = measured
    raw, summary = record["raw"], record["summary"]
    assert not any(k.startswith("overhead") for k in summary["uncached"])
    for method in ("SenCache", "FirstBlockCache", "MagCache"):
        for key in host_cost_measure.FIGURES:
            diffs = [a - b for a, b in zip(raw[method][key], raw["uncached"][key], strict=True)]
            o = summary[method][f"overhead_{key}"]
            assert o["median"] == pytest.approx(statistics.median(diffs)) and o["n"] == ROUNDS
            assert o["p5"] <= o["p25"] <= o["median"] <= o["p75"] <= o["p95"]
            assert all(math.isfinite(v) for k, v in o.items() if k != "n")
        frac = [a / b - 1 for a, b in zip(raw[method]["step_cpu_us"], raw["uncached"]["step_cpu_us"], strict=True)]
        assert summary[method]["overhead_step_cpu_us_fraction"]["median"] == pytest.approx(statistics.median(frac))
    for key in ("step_cpu_us", "step_us"):
        cmp = summary["SenCache_vs_FirstBlockCache"][key]
        sen = statistics.median(a - b for a, b in zip(raw["SenCache"][key], raw["uncached"][key], strict=True))
        fbc = statistics.median(a - b for a, b in zip(raw["FirstBlockCache"][key], raw["uncached"][key], strict=True))
        assert cmp["overhead_ratio"]["ratio"] == pytest.approx(sen / fbc)
        lo, hi = cmp["overhead_ratio"]["ci95"]
        assert math.isfinite(lo) and math.isfinite(hi) and lo <= hi
        direct = [a - b for a, b in zip(raw["SenCache"][key], raw["FirstBlockCache"][key], strict=True)]
        assert cmp["difference_us"]["median"] == pytest.approx(statistics.median(direct))


def test_profile_and_table(measured):
    out, record = measured
    prof = record["profile"]
    model = prof["selected"]["Wan transformer forward (model)"]
    assert model["found"] and model["calls"] == pytest.approx(2)  # cond and uncond every step
    assert prof["top_added"] and all(a["added_own_us"] > 0 and a["calls_sencache"] > a["calls_uncached"]
                                     for a in prof["top_added"])
    assert all(math.isfinite(v) and v > 0 for v in record["components"]["us_per_step"].values())
    assert record["components"]["calls_per_step"]["SensitivityProfile.lookup"] == 1 / STEPS  # once per call
    # the pieces timed in place: each ran as often per step as the step path says (counted, not assumed)
    pieces = record["in_situ"]["pieces"]
    per_step = {label: p["calls_per_step"] for label, p in pieces.items()}
    assert per_step == {
        "StepClock.enter, leading call: the step's tick": 1, "StepClock.enter, following call": 1,
        "DecisionState.decide (decide op, flag read, x_ref copy)": 1, "the decide op alone (sencache::decide)": 1,
        "BlockStack.residual (out - in)": 2,  # cond and uncond each store their residual
        "FirstBlockCache head-block check (residual change and its host read)": 2,
        **{f"cache_context enter+exit, {m}": 2 for m in ("uncached", "SenCache", "FirstBlockCache")}}
    assert all(math.isfinite(p["median_us"]) and p["median_us"] > 0 for p in pieces.values())
    assert math.isfinite(record["in_situ"]["decide_op_isolated_us"]) and record["in_situ"]["decide_op_isolated_us"] > 0
    table = out.with_suffix(".md").read_text()
    assert table == host_cost_report.markdown_table(record)
    rows = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[6:10]]
    assert rows == list(host_cost_measure.METHODS)
    out.with_suffix(".md").unlink()
    host_cost.main(["--render", str(out)])  # the table is regenerated from the record alone
    assert out.with_suffix(".md").read_text() == table


def test_quantiles():
    assert host_cost_report.quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert host_cost_report.spread([float(v) for v in range(101)]) == {"median": 50.0, "p25": 25.0, "p75": 75.0,
                                                                      "p5": 5.0, "p95": 95.0, "n": 101}


@pytest.mark.parametrize("method", ["FirstBlockCache", "SenCache"])
def test_a_cache_that_skips_is_refused(method):
    pipe = build_pipeline("wan", num_layers=2)
    if method == "FirstBlockCache":
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=1e9))
    else:
        profile = host_cost_measure.flat_profile(pipe.transformer)
        sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=profile, eps=1e9, eps_start=1e9))
    probe = host_cost_measure.Probe(pipe.transformer)
    kwargs = call_kwargs("wan", pipe, num_inference_steps=STEPS, output_type="latent", **host_cost_measure.GEOMETRY)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="cache skipped"):
        host_cost_measure.run_call(method, pipe, probe, kwargs, STEPS)
