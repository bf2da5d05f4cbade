import os

import pytest
from PIL import Image

from sencache.demo import run_demo
from sencache.metrics import psnr


def test_demo_runs_and_writes_gif(tmp_path, capsys):
    res = run_demo("ltx", steps=8, eps=0.2, calibration_samples=1, out_dir=str(tmp_path), repeats=2)
    out = capsys.readouterr().out
    assert "PSNR vs uncached" in out and res["gif"] in out
    # honest timing: the median of the repeated runs, their range, and what a CPU timing is not
    assert len(res["times_uncached"]) == len(res["times_sencache"]) == 2
    assert res["time_uncached"] == pytest.approx(sum(res["times_uncached"]) / 2)
    assert "wall, median of 2" in out and "not a speed claim" in out
    assert 1 <= res["nfe"] <= 8 and res["psnr"] > 0
    with Image.open(res["gif"]) as im:
        assert im.n_frames == 9 and im.size[0] == 3 * im.size[1]  # three panels side by side


def test_demo_plans_for_a_target(tmp_path, capsys):
    res = run_demo("ltx", steps=6, target_nfe=3, schedule="planned", calibration_samples=1, out_dir=str(tmp_path),
                   repeats=1)
    out = capsys.readouterr().out
    assert "planned tolerances for 3 NFE: predicted NFE 3.00" in out and "PSNR vs uncached" in out
    assert abs(res["nfe"] - 3) <= 1


@pytest.mark.parametrize("model", ["flux", "wan22"])  # an image family (one frame), two experts
def test_demo_runs_the_new_families(model, tmp_path, capsys):
    res = run_demo(model, steps=8, eps=0.5, eps_start=0.5, calibration_samples=1, out_dir=str(tmp_path), repeats=1)
    assert "PSNR vs uncached" in capsys.readouterr().out
    assert 1 <= res["nfe"] < 8 and res["psnr"] > 0
    with Image.open(res["gif"]) as im:
        assert im.size[0] == 3 * im.size[1]
        assert im.n_frames == (1 if model == "flux" else 9)


def test_psnr():
    import torch

    a = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 0.1) - 20.0) < 1e-6


@pytest.mark.slow
def test_demo_on_the_reference_model(tmp_path, capsys):
    res = run_demo("reference", steps=8, eps=0.5, out_dir=str(tmp_path), prompt="green square up-down", repeats=1)
    out = capsys.readouterr().out
    assert "sencache_profile.safetensors" in out and "SSIM vs uncached" in out  # the shipped profile, no calibration
    assert 1 <= res["nfe"] < 8 and 0 < res["ssim"] <= 1
    with Image.open(res["gif"]) as im:
        assert im.n_frames == 17 and im.size[0] == 3 * im.size[1]


def _no_work(monkeypatch):
    """Make any pipeline work fail the test: bad arguments must be refused before it."""
    import sencache.demo

    def fail(*args, **kwargs):
        raise AssertionError("the demo started work before rejecting its arguments")

    monkeypatch.setattr(sencache.demo, "_setup", fail)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="sdxl"), "unknown model"),
        (dict(model="wan", prompt="red circle grow"), "reference model only"),
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(steps=-5), "steps must be an integer >= 1, got -5"),
        (dict(prompt=""), "the prompt is empty"),
        (dict(prompt="   "), "the prompt is empty"),
        (dict(prompt="purple circle grow"), "must name exactly one colour"),
        (dict(eps=-0.1), "eps must be a finite number >= 0"),
        (dict(eps_start=float("nan")), "eps_start must be"),
        (dict(max_skips=-1), "max_skips must be an integer >= 0"),
        (dict(calibration_samples=0), "calibration_samples must be"),
        (dict(repeats=0), "repeats must be"),
        (dict(target_nfe=20, eps=0.1), "give it without eps"),
        (dict(target_nfe=0), r"target_nfe must be a number in \[1, 50\]"),
        (dict(model="wan", target_nfe=31), r"\[1, 30\]"),
        (dict(schedule="planned"), "give target_nfe with it"),
    ],
)
def test_demo_rejects_bad_arguments_before_any_work(monkeypatch, tmp_path, kwargs, match):
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=match):
        run_demo(**{"out_dir": str(tmp_path), **kwargs})


def test_demo_rejects_an_unwritable_out_before_any_work(monkeypatch, tmp_path):
    _no_work(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "sub"):  # unwritable even for root
        with pytest.raises(ValueError, match=rf"cannot write the GIF to --out '{out}'.*choose a writable"):
            run_demo(out_dir=str(out))
    if os.geteuid() != 0:  # root writes into read-only directories
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot write the GIF"):
            run_demo(out_dir=str(locked))


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["--steps", "-3"], "argument --steps: must be >= 1, got -3"),
        (["--steps", "ten"], "argument --steps: expected an integer"),
        (["--eps", "-1"], "argument --eps: must be a finite number >= 0"),
        (["--repeats", "0"], "argument --repeats: must be >= 1"),
        (["--prompt", ""], "the prompt is empty"),
        (["--target-nfe", "20", "--eps-start", "0.01"], "target_nfe plans the tolerances: give it without eps"),
        (["--schedule", "planned"], "the planned schedule plans the tolerances for a target: give target_nfe"),
    ],
)
def test_demo_cli_exits_2_with_one_line(monkeypatch, capsys, argv, says):
    from sencache.cli import main

    _no_work(monkeypatch)
    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"sencache demo: error: {says}" in err and "Traceback" not in err


def test_demo_cli_rejects_an_unwritable_out(monkeypatch, capsys, tmp_path):
    from sencache.cli import main

    _no_work(monkeypatch)
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "f" / "gifs")])
    assert exc.value.code == 2 and "cannot write the GIF to --out" in capsys.readouterr().err


def test_cli_help_names_each_program(capsys):
    """``sencache train-reference --help`` says ``sencache train-reference`` (it said python -m ...); the demo's help
    says how long it takes."""
    from sencache.cli import main

    for command, prog in (("train-reference", "usage: sencache train-reference"), ("demo", "usage: sencache demo"),
                          ("quality", "usage: sencache quality")):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert exc.value.code == 0 and out.startswith(prog), out[:200]
        if command == "demo":
            assert "runtime:" in out and "2-core CPU" in out and "--repeats" in out
