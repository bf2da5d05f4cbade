import re
import warnings

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


def test_nearest_tie_takes_the_larger_timestep():
    """Half-way between two entries "nearest" takes the larger timestep, as the authors' reference code does (the
    first minimum of |table - t| over their descending table): a 50-step DDIM profile (999, 979, ..., 19) serving the
    20-step schedule (999, 949, ..., 49) hits a tie at every other step (949 is half-way between 959 and 939)."""
    t50 = torch.arange(999, 0, -20)  # CogVideoX's trailing DDIM timesteps, 50 steps
    t20 = torch.arange(999, 0, -50)  # and 20
    prof = sencache.SensitivityProfile(timesteps=t50, jx=torch.arange(50.0) + 1, jt=torch.arange(50.0) / 100)
    jx, jt = prof.lookup(t20, "nearest")
    # the rule, stated independently: the nearest entry, ties to the larger timestep
    want = [min(range(50), key=lambda i: (abs(float(t50[i]) - float(t)), -float(t50[i]))) for t in t20]
    assert jx.tolist() == [float(i + 1) for i in want] and jt.tolist() == pytest.approx([i / 100 for i in want])
    ties = [k for k, t in enumerate(t20.tolist()) if (999 - t) % 20 == 10]
    assert len(ties) == 10 and all(float(t50[want[k]]) == t20[k] + 10 for k in ties)  # the larger neighbour
    # off the midpoint, the closer entry; an ascending or shuffled table gives the same values
    assert prof.lookup(torch.tensor([948.9, 949.1]), "nearest")[0].tolist() == [4.0, 3.0]
    shuffled = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    other = sencache.SensitivityProfile(timesteps=t50[shuffled], jx=prof.jx[shuffled], jt=prof.jt[shuffled])
    assert torch.equal(other.lookup(t20, "nearest")[0], jx)


def _write(path, tensors, header):
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=header)
    return path


_TS = torch.linspace(1000, 0, 5)
_OK = {"timesteps": _TS, "jx": torch.ones(5), "jt": torch.ones(5)}
_META = '{"transformer_class": "WanTransformer3DModel"}'
# (tensors, header, the field the error names): malformed files that loaded, or failed with a bare error, before
MALFORMED = {
    "metadata not JSON": (_OK, {"format": "1", "metadata": "not json{"}, "'metadata' is not valid JSON"),
    "metadata null": (_OK, {"format": "1", "metadata": "null"}, "metadata must be a JSON object"),
    "metadata a list": (_OK, {"format": "1", "metadata": "[1, 2]"}, "metadata must be a JSON object"),
    "format not a number": (_OK, {"format": "abc", "metadata": _META}, "'format' must be a whole number"),
    "format 1.5": (_OK, {"format": "1.5", "metadata": _META}, "'format' must be a whole number"),
    "format from the future": (_OK, {"format": "2", "metadata": _META}, "field 'format'"),
    "no transformer_class": (_OK, {"format": "1", "metadata": "{}"}, "'transformer_class' .* is missing"),
    "class not a string": (_OK, {"format": "1", "metadata": '{"transformer_class": 5}'},
                           "'transformer_class' must be a non-empty string"),
    "class empty": (_OK, {"format": "1", "metadata": '{"transformer_class": ""}'}, "'transformer_class' must be"),
    "scheduler_class a list": (_OK, {"format": "1", "metadata": '{"transformer_class": "W", "scheduler_class": [1]}'},
                               "'scheduler_class' must be"),
    "steps a string": (_OK, {"format": "1", "metadata": '{"transformer_class": "W", "num_inference_steps": "50"}'},
                       "'num_inference_steps' must be an integer"),
    "jx_samples NaN": ({**_OK, "jx_samples": torch.tensor([[1.0, float("nan"), 1, 1, 1]])},
                       {"format": "1", "metadata": _META}, "jx_samples must be finite"),
    "jt_samples inf": ({**_OK, "jt_samples": torch.full((2, 5), float("inf"))}, {"format": "1", "metadata": _META},
                       "jt_samples must be finite"),
    "jx_samples negative": ({**_OK, "jx_samples": -torch.ones(2, 5)}, {"format": "1", "metadata": _META},
                            "jx_samples must be finite and >= 0"),
    "jt inf": ({**_OK, "jt": torch.tensor([1.0, float("inf"), 1, 1, 1])}, {"format": "1", "metadata": _META},
               "jt must be finite"),
    "jx boolean": ({**_OK, "jx": torch.ones(5, dtype=torch.bool)}, {"format": "1", "metadata": _META},
                   "jx must hold real numbers"),
    "timesteps 2-D": ({**_OK, "timesteps": _TS.reshape(1, 5)}, {"format": "1", "metadata": _META},
                      "timesteps must be a non-empty 1-D"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_name_the_file_and_the_field(case, tmp_path, capsys):
    """Each malformed profile raises ValueError naming the file and the field; ``sencache show`` prints that in one
    line on stderr and exits with status 2 (no traceback)."""
    from sencache.cli import main

    tensors, header, field = MALFORMED[case]
    path = _write(tmp_path / "bad.sencache.safetensors", tensors, header)
    with pytest.raises(ValueError, match=re.escape(repr(str(path))) + ".*" + field):
        sencache.SensitivityProfile.load(path)
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(path)])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("sencache show: ") and str(path) in err and "Traceback" not in err
    assert re.search(field, err)


def test_show_missing_and_foreign_files_exit_2(tmp_path, capsys):
    from sencache.cli import main

    for path in (tmp_path / "missing.safetensors", tmp_path, _write(tmp_path / "w.safetensors", {"w": torch.ones(2)},
                                                                      {})):
        with pytest.raises(SystemExit) as exit_info:
            main(["show", str(path)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and str(path) in err, err


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metadata={"transformer_class": 5}), "'transformer_class' must be a non-empty string"),
        (dict(metadata=None), "metadata must be a JSON object"),
        (dict(jx_samples=torch.tensor([[1.0, float("nan")]])), "jx_samples must be finite"),
        (dict(jt_samples=torch.tensor([[1.0, -float("inf")]])), "jt_samples must be finite"),
        (dict(jt=torch.tensor([1.0, 2.0], dtype=torch.complex64)), "jt must hold real numbers"),
    ],
)
def test_invalid_tables_and_metadata_are_refused_in_memory(kwargs, match):
    args = {**dict(timesteps=torch.tensor([1.0, 2.0]), jx=torch.ones(2), jt=torch.ones(2)), **kwargs}
    with pytest.raises(ValueError, match=match):
        sencache.SensitivityProfile(**args)


def test_a_profile_without_a_string_class_is_not_applied():
    """A hand-made profile must say which transformer it is for, or apply_sencache's check refuses it."""
    pipe = tiny.build_pipeline("wan")
    with pytest.raises(ValueError, match="'transformer_class' .*is missing.*give metadata="):
        make().check_compatible(pipe.transformer, pipe.scheduler)
    p = make(transformer_class="WanTransformer3DModel")
    p.check_compatible(pipe.transformer, pipe.scheduler)
    p.metadata["transformer_class"] = ["WanTransformer3DModel"]  # changed after construction
    with pytest.raises(ValueError, match="'transformer_class' must be a non-empty string"):
        p.check_compatible(pipe.transformer, pipe.scheduler)


def test_range_check_warns_once_with_both_ranges():
    """A profile calibrated on [0, 1] (sigmas) used by a scheduler over [0, 1000] warns once, naming both ranges."""
    p = sencache.SensitivityProfile(timesteps=torch.linspace(1, 0, 11), jx=torch.ones(11), jt=torch.ones(11))
    with pytest.warns(UserWarning, match=r"covers timesteps \[0, 1\], the scheduler runs over \[0, 1000\]"):
        assert p.check_range(0, 1000) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert p.check_range(0.0, 1000.0) is False  # the same range again: no second warning
    with pytest.warns(UserWarning, match=r"over \[500, 500\]"):
        assert p.check_range(500, 500) is False  # a single timestep far outside
    assert p.check_range(0.2, 0.9) and p.check_range(0.5, 0.5)  # inside: silent
    with pytest.raises(ValueError, match="finite lo <= hi"):
        p.check_range(10, 0)


def test_range_check_accepts_calibrated_profiles_on_their_schedulers():
    """A 50-step profile of each tiny pipeline's scheduler covers that scheduler's range (its full training schedule
    at construction, which reaches further than 50 steps do) and the 20- and 10-step schedules: no warning."""
    from sencache.profile import scheduler_range

    for arch in tiny.ARCHITECTURES:
        sched = tiny.build_pipeline(arch).scheduler
        full = scheduler_range(sched)
        assert full is not None and full[1] >= 999 and full[0] <= 7
        sched.set_timesteps(50)
        t50 = sched.timesteps.clone()
        p = sencache.SensitivityProfile(timesteps=t50, jx=torch.ones(50), jt=torch.ones(50))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert p.check_range(*full), arch
            for steps in (20, 10):
                sched.set_timesteps(steps)
                assert p.check_scheduler_range(sched), (arch, steps)
        q = sencache.SensitivityProfile(timesteps=t50 / 1000, jx=torch.ones(50), jt=torch.ones(50))  # sigmas
        with pytest.warns(UserWarning, match="calibrated with this scheduler, in the same units"):
            assert q.check_scheduler_range(sched) is False


def test_scheduler_range_sources():
    from types import SimpleNamespace

    from sencache.profile import scheduler_range

    assert scheduler_range(None) is None
    assert scheduler_range(SimpleNamespace(timesteps=None, config={"num_train_timesteps": 1000})) == (0.0, 1000.0)
    assert scheduler_range(SimpleNamespace(timesteps=torch.tensor([981.0, 3.5, float("nan")]))) == (3.5, 981.0)
    assert scheduler_range(SimpleNamespace(timesteps=torch.tensor([]), config={})) is None
