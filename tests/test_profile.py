import pytest
import torch

import sencache
from sencache import offline_pipelines as tiny
from sencache.profile import config_hash


def make(n=6, **meta):
    g = torch.Generator().manual_seed(7)
    ts = torch.linspace(1000, 50, n)
    return sencache.SensitivityProfile(timesteps=ts, jx=torch.rand(n, generator=g) + 0.1,
                                       jt=torch.rand(n, generator=g) * 1e-3, metadata=meta,
                                       jx_samples=torch.rand(3, n, generator=g),
                                       jt_samples=torch.rand(3, n, generator=g))


def test_save_load_roundtrip(tmp_path):
    p = make(transformer_class="WanTransformer3DModel", num_samples=3, seeds=[1, 2, 3])
    path = tmp_path / "wan.sencache.safetensors"
    p.save(path)
    q = sencache.SensitivityProfile.load(path)
    for k in ("timesteps", "jx", "jt", "jx_samples", "jt_samples"):
        assert torch.equal(getattr(p, k), getattr(q, k)), k
    assert q.metadata == p.metadata


def test_lookup_at_table_points_is_exact_and_interpolates_between():
    p = make()
    jx, jt = p.lookup(p.timesteps.float())
    torch.testing.assert_close(jx.double(), p.jx, rtol=1e-6, atol=0)
    torch.testing.assert_close(jt.double(), p.jt, rtol=1e-6, atol=0)
    # midpoints: linear interpolation in t, nearest picks the closer entry
    t0, t1 = p.timesteps[1], p.timesteps[2]
    q = torch.tensor([float(0.75 * t0 + 0.25 * t1)])
    jx_lin, _ = p.lookup(q, "linear")
    jx_near, _ = p.lookup(q, "nearest")
    torch.testing.assert_close(jx_lin.double(), (0.75 * p.jx[1] + 0.25 * p.jx[2]).reshape(1), rtol=1e-5, atol=0)
    assert float(jx_near) == pytest.approx(float(p.jx[1]), rel=1e-6)
    # outside the table: clamped to the ends
    jx_out, _ = p.lookup(torch.tensor([5000.0, -3.0]))
    assert jx_out.tolist() == pytest.approx([float(p.jx[0]), float(p.jx[-1])], rel=1e-6)
    # integer timesteps (CogVideoX) work too
    assert p.lookup(torch.tensor([999, 500]))[0].dtype == torch.float32


def test_profile_from_50_steps_serves_other_step_counts():
    """A profile made at 50 steps, looked up at the 20-step schedule of the same scheduler, interpolates its curve."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=5.0)
    s.set_timesteps(50)
    t50 = s.timesteps.clone()
    prof = sencache.SensitivityProfile(timesteps=t50, jx=t50 / 1000 + 0.5, jt=torch.full_like(t50, 1e-3))
    s.set_timesteps(20)
    jx, jt = prof.lookup(s.timesteps)
    torch.testing.assert_close(jx.double(), (s.timesteps.double() / 1000 + 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(timesteps=torch.tensor([]), jx=torch.tensor([]), jt=torch.tensor([])), "non-empty"),
        (dict(timesteps=torch.tensor([1.0, 2.0]), jx=torch.tensor([1.0]), jt=torch.tensor([1.0, 1.0])), "shape"),
        (dict(timesteps=torch.tensor([1.0, 2.0]), jx=torch.tensor([1.0, float("nan")]), jt=torch.ones(2)), "finite"),
        (dict(timesteps=torch.tensor([1.0, 2.0]), jx=torch.tensor([1.0, -1.0]), jt=torch.ones(2)), ">= 0"),
        (dict(timesteps=torch.tensor([1.0, 1.0]), jx=torch.ones(2), jt=torch.ones(2)), "distinct"),
    ],
)
def test_invalid_profiles_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sencache.SensitivityProfile(**kwargs)


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibrate"):
        sencache.SensitivityProfile.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable"):
        sencache.SensitivityProfile.load(bad)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(2)}, str(other))
    with pytest.raises(ValueError, match="not a SenCache sensitivity profile"):
        sencache.SensitivityProfile.load(other)


def test_compatibility_checks():
    pipe = tiny.build_pipeline("wan")
    meta = {"transformer_class": "WanTransformer3DModel",
            "transformer_config_hash": config_hash(pipe.transformer.config),
            "scheduler_class": "FlowMatchEulerDiscreteScheduler"}
    make(**meta).check_compatible(pipe.transformer, pipe.scheduler)  # fine
    with pytest.raises(ValueError, match="calibrated for WanTransformer3DModel, got CogVideoX"):
        make(**meta).check_compatible(tiny.build_pipeline("cogvideox").transformer)
    with pytest.raises(ValueError, match="scheduler"):
        other = make(**{**meta, "scheduler_class": "UniPCMultistepScheduler"})
        other.check_compatible(pipe.transformer, pipe.scheduler)
    with pytest.warns(UserWarning, match="another config"):
        make(**{**meta, "transformer_config_hash": "0" * 16}).check_compatible(pipe.transformer, pipe.scheduler)


def test_cli_show_prints_the_table(tmp_path, capsys):
    from sencache.cli import main

    path = tmp_path / "p.sencache.safetensors"
    make(transformer_class="WanTransformer3DModel").save(path)
    main(["show", str(path)])
    out = capsys.readouterr().out
    assert "transformer_class: WanTransformer3DModel" in out and len(out.strip().splitlines()) == 1 + 1 + 6
