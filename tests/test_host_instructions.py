"""benchmarks/host_instructions.py: its worker runs every method without skipping, and its arithmetic (the valgrind
runs themselves are the benchmark, not run here)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import host_instructions as hi  # noqa: E402


@pytest.mark.parametrize("method", hi.METHODS)
def test_worker_runs_each_method(method):
    hi.worker(method, 3)  # raises if SenCache skipped a step at eps=0


def test_worker_rejects_unknown_methods():
    with pytest.raises(ValueError, match="unknown method"):
        hi.worker("TeaCache", 1)


def test_parse_and_per_step_and_table():
    assert hi.parse_instructions("==1== \n==1== I   refs:      5,294,382,975\n") == 5_294_382_975
    with pytest.raises(RuntimeError, match="no instruction count"):
        hi.parse_instructions("valgrind: command not found")
    counts = {"uncached": {40: 1000, 140: 2000}, "SenCache": {40: 1500, 140: 3300},
              "FirstBlockCache": {40: 1200, 140: 2700}, "MagCache": {40: 1100, 140: 2600}}
    per = hi.per_step(counts, 40, 140)
    assert per == {"uncached": 10.0, "SenCache": 18.0, "FirstBlockCache": 15.0, "MagCache": 15.0}
    record = {"per_step": per, "methods": list(hi.METHODS), "short": 40, "long": 140, "cpu": "x",
              "versions": {"torch": "t", "diffusers": "d"}, "date": "today", "command": "cmd"}
    table = hi.markdown_table(record)
    assert "| SenCache | 18 | +8 | 1.60 |" in table and "| uncached | 10 | baseline | |" in table
