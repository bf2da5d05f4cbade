"""The planning tables of a profile (drift mean / spread / samples, timestep gaps, guidance contexts): saved, loaded,
checked; profiles written before they existed still load."""

import json

import pytest
import torch
from safetensors.torch import save_file

import sencache
from sencache import offline_pipelines as tiny


def planned(n=5):
    g = torch.Generator().manual_seed(3)
    drift = torch.rand(4, n, generator=g) + 0.5
    return sencache.SensitivityProfile(
        timesteps=torch.linspace(900, 100, n), jx=torch.rand(n, generator=g), jt=torch.rand(n, generator=g),
        metadata={"transformer_class": "WanTransformer3DModel", "guidance_contexts": 2, "estimator": "chained"},
        drift=drift.mean(0), drift_std=drift.std(0, correction=0), dt=torch.full((n,), 200.0), drift_samples=drift,
        change_samples=torch.rand(4, n, 3, generator=g))


def test_planning_tables_roundtrip(tmp_path):
    p = planned()
    p.save(tmp_path / "p.safetensors")
    q = sencache.SensitivityProfile.load(tmp_path / "p.safetensors")
    for k in ("drift", "drift_std", "dt", "drift_samples", "change_samples"):
        assert torch.equal(getattr(p, k), getattr(q, k)), k
    assert q.metadata["guidance_contexts"] == 2 and q.metadata["estimator"] == "chained"


def test_profile_written_before_the_planning_tables_loads(tmp_path):
    """The layout ``save`` wrote before: the Jx/Jt tables (and samples), format 1, no drift, gaps or contexts."""
    n = 4
    tensors = {"timesteps": torch.linspace(999, 250, n, dtype=torch.float64), "jx": torch.ones(n, dtype=torch.float64),
               "jt": torch.full((n,), 1e-3, dtype=torch.float64), "jx_samples": torch.ones(2, n, dtype=torch.float64),
               "jt_samples": torch.full((2, n), 1e-3, dtype=torch.float64)}
    meta = {"transformer_class": "WanTransformer3DModel", "num_samples": 2, "num_inference_steps": n}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={"format": "1", "metadata": json.dumps(meta)})
    q = sencache.SensitivityProfile.load(tmp_path / "old.safetensors")
    assert q.drift is None and q.drift_std is None and q.dt is None and q.drift_samples is None
    assert q.change_samples is None
    assert "guidance_contexts" not in q.metadata
    assert torch.equal(q.jx, tensors["jx"]) and torch.equal(q.jt_samples, tensors["jt_samples"])
    # and it is applied as before
    pipe = tiny.build_pipeline("wan")
    sencache.apply_sencache(pipe, sencache.SenCacheConfig(profile=q))
    sencache.remove_sencache(pipe)


@pytest.mark.parametrize(("change", "match"), [
    ({"drift": torch.ones(3)}, r"drift must be \(5,\)"),
    ({"dt": torch.ones(2, 5)}, r"dt must be \(5,\)"),
    ({"drift_samples": torch.ones(5)}, r"drift_samples must be \[num_samples, 5\]"),
    ({"drift_std": torch.full((5,), -1.0)}, "drift_std must be finite and >= 0"),
    ({"dt": torch.full((5,), float("nan"))}, "dt must be finite and >= 0"),
    ({"change_samples": torch.ones(4, 5)}, r"change_samples must be \[num_samples, 5, window\]"),
    ({"change_samples": torch.ones(4, 6, 3)}, r"change_samples must be \[num_samples, 5, window\]"),
    ({"change_samples": torch.ones(4, 5, 0)}, r"change_samples must be \[num_samples, 5, window\]"),
    ({"change_samples": torch.full((4, 5, 3), -1.0)}, "change_samples must be finite and >= 0"),
])
def test_planning_tables_are_checked(change, match):
    p = planned()
    fields = {k: getattr(p, k) for k in ("timesteps", "jx", "jt", "metadata", "drift", "drift_std", "dt",
                                         "drift_samples", "change_samples")}
    with pytest.raises(ValueError, match=match):
        sencache.SensitivityProfile(**{**fields, **change})


def test_guidance_contexts_must_be_a_count():
    p = planned()
    with pytest.raises(ValueError, match="guidance_contexts"):
        sencache.SensitivityProfile(timesteps=p.timesteps, jx=p.jx, jt=p.jt,
                                    metadata={**p.metadata, "guidance_contexts": 0})
