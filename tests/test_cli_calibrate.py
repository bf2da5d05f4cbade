"""``sencache calibrate`` end to end on a tiny pipeline saved with ``save_pretrained``, and ``sencache show --plot``."""

import pytest
import torch
from safetensors.torch import save_file

import sencache
from sencache import offline_pipelines as tiny
from sencache.cli import main


def test_calibrate_a_saved_pipeline_and_show_it(tmp_path, capsys):
    # CogVideoX: Wan's float32 modules would need accelerate to load with from_pretrained (not a test dependency)
    pipe = tiny.build_pipeline("cogvideox")
    pipe.save_pretrained(tmp_path / "pipe")
    kw = tiny.call_kwargs("cogvideox", pipe, num_inference_steps=4)
    save_file({k: torch.cat([kw[k], kw[k] * 0.5]).contiguous() for k in ("prompt_embeds", "negative_prompt_embeds")},
              str(tmp_path / "conditions.safetensors"))
    out = tmp_path / "profiles" / "cogvideox.safetensors"
    main(["calibrate", str(tmp_path / "pipe"), "--conditions", str(tmp_path / "conditions.safetensors"),
          "--samples", "2", "--steps", "4", "--out", str(out), "--height", "16", "--width", "16", "--num-frames", "9",
          "--guidance-scale", "5", "--arg", "max_sequence_length=16"])
    printed = capsys.readouterr()
    assert "profile written to" in printed.out and "2 samples x 4 steps" in printed.out
    prof = sencache.SensitivityProfile.load(out)
    assert prof.metadata["transformer_class"] == "CogVideoXTransformer3DModel" and prof.metadata["num_samples"] == 2
    assert prof.metadata["guidance_contexts"] == 2 and prof.metadata["seeds"] == [0, 1]
    # the same as calibrating the pipeline in memory on the same conditions and seeds
    conditions = [{k: kw[k] * s for k in ("prompt_embeds", "negative_prompt_embeds")} for s in (1.0, 0.5)]
    ref = sencache.calibrate(pipe, conditions=conditions, num_samples=2, num_inference_steps=4, progress=False,
                             height=16, width=16, num_frames=9, guidance_scale=5.0, max_sequence_length=16)
    torch.testing.assert_close(prof.jx_samples, ref.jx_samples, rtol=1e-5, atol=0)
    torch.testing.assert_close(prof.drift_samples, ref.drift_samples, rtol=1e-5, atol=0)

    png = tmp_path / "plot.png"
    main(["show", str(out), "--plot", str(png)])
    shown = capsys.readouterr().out
    assert "drift" in shown and len(shown.strip().splitlines()) > 4
    header = next(line for line in shown.splitlines() if line.split()[:1] == ["step"])
    first = shown.splitlines()[shown.splitlines().index(header) + 1].split()
    assert header.split()[-1] == "change"  # the output's change to the next step, mean over the samples
    assert float(first[-1]) == pytest.approx(float(prof.change_samples[:, 0, 0].mean()), rel=1e-4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrate_command_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["calibrate", str(tmp_path), "--samples", "2", "--out", str(tmp_path / "p.safetensors")])
    assert "one of the arguments --prompts --conditions is required" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(SystemExit, match="no prompts"):
        main(["calibrate", str(tmp_path), "--prompts", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "p")])
    (tmp_path / "prompts.txt").write_text("a red fox\n")
    with pytest.raises(SystemExit, match="no pipeline saved with save_pretrained"):
        main(["calibrate", str(tmp_path / "nowhere"), "--prompts", str(tmp_path / "prompts.txt"), "--out",
              str(tmp_path / "p")])
