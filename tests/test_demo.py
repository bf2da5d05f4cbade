from PIL import Image

from sencache.demo import run_demo
from sencache.quality import psnr


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
