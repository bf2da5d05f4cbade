import pytest
from PIL import Image

from sencache.demo import run_demo
from sencache.metrics import psnr


def test_demo_runs_and_writes_gif(tmp_path, capsys):
    res = run_demo("ltx", steps=8, eps=0.2, calibration_samples=1, out_dir=str(tmp_path))
    out = capsys.readouterr().out
    assert "PSNR vs uncached" in out and res["gif"] in out
    assert 1 <= res["nfe"] <= 8 and res["psnr"] > 0
    with Image.open(res["gif"]) as im:
        assert im.n_frames == 9 and im.size[0] == 3 * im.size[1]  # three panels side by side


def test_psnr():
    import torch

    a = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert psnr(a, a) == float("inf")
    assert abs(psnr(a, a + 0.1) - 20.0) < 1e-6


@pytest.mark.slow
def test_demo_on_the_reference_model(tmp_path, capsys):
    res = run_demo("reference", steps=8, eps=0.5, out_dir=str(tmp_path), prompt="green square up-down")
    out = capsys.readouterr().out
    assert "sencache_profile.safetensors" in out and "SSIM vs uncached" in out  # the shipped profile, no calibration
    assert 1 <= res["nfe"] < 8 and 0 < res["ssim"] <= 1
    with Image.open(res["gif"]) as im:
        assert im.n_frames == 17 and im.size[0] == 3 * im.size[1]


def test_demo_rejects_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="unknown model"):
        run_demo("sdxl")
    with pytest.raises(ValueError, match="reference model only"):
        run_demo("wan", prompt="red circle grow")
