"""The planner (issue 18): tolerances for a speed target from a profile's calibration trajectories, the per-step
tolerance reaching the runtime, ``sencache plan``, and realized against predicted NFE on a tiny pipeline."""

import dataclasses
import itertools
import math

import pytest
import torch

import sencache
from sencache import planner
from sencache.cli import main as cli_main
from sencache.config import EPS_START_RATIO
from sencache_kernels import COMPUTE, DecisionState
from tests.helpers import calibration_kwargs


def synthetic(n=12, samples=4, seed=0, numel=64, scale=None, spread=0.5, transformer="WanTransformer3DModel"):
    """A profile with calibration trajectories: drift growing along the schedule, ``1 +- spread`` over the samples
    (``scale``: a factor per sample on its drift)."""
    g = torch.Generator().manual_seed(seed)
    noise = (torch.rand(samples, n, generator=g, dtype=torch.float64) * 2 - 1) * spread
    drift = (1 + noise) * torch.linspace(0.5, 3.0, n)
    if scale is not None:
        drift = drift * torch.tensor(scale, dtype=torch.float64)[:, None]
    t = torch.linspace(1000, 1000 / n, n, dtype=torch.float64)
    gaps = (t[:-1] - t[1:]).abs()
    return sencache.SensitivityProfile(
        timesteps=t, jx=torch.rand(n, generator=g) + 0.5, jt=(torch.rand(n, generator=g) + 0.5) * 1e-3,
        metadata={"transformer_class": transformer, "latent_numel": numel, "num_samples": samples},
        drift=drift.mean(0), drift_std=drift.std(0, correction=0), dt=torch.cat([gaps, gaps[-1:]]),
        drift_samples=drift)


def test_simulator_decides_like_the_decide_op(gen):
    """On straight trajectories (where the summed drift is the exact distance) the simulator takes the decisions of
    the runtime's decide op, step by step, with the skip cap and forced steps."""
    profile = synthetic(n=11, samples=3)
    traj = planner.Trajectories.from_profile(profile, max_skips=2, force_first=2, force_last=1)
    mean_step = torch.diagonal(traj.scores(traj.reach.mean(0)), 1) / traj.root_n  # score of one step
    eps = torch.cat([torch.zeros(1, dtype=torch.float64),
                     mean_step * (torch.rand(10, generator=gen, dtype=torch.float64) * 2.5 + 0.3)])
    computed, _ = planner.simulate(traj, eps)
    direction = torch.randn(1, 4, 16, generator=gen)
    direction /= direction.norm()
    for s in range(traj.reach.shape[0]):
        state = DecisionState(direction)
        for m in range(len(profile)):
            x = (direction.double() * traj.reach[s, m]).float()
            t = profile.timesteps[m:m + 1].float()
            jx, jt = profile.lookup(t)
            flag = state.decide(x, t, jx, jt, float(eps[m]), bool(traj.forced[m]), max_skips=2)
            assert bool(flag & COMPUTE) == bool(computed[s, m]), (s, m)
    assert 0 < int((~computed).sum()) < computed.numel() - 3 * traj.reach.shape[0]  # skips and computes by score


def _cost(traj, mask):
    """The predicted error of the mean trajectory for a choice of computed steps, written out."""
    reach, total, r = traj.reach.mean(0), 0.0, 0
    for m in range(len(mask)):
        if mask[m]:
            r = m
        else:
            score = traj.jx[r] * (reach[m] - reach[r]) + traj.jt[r] * abs(traj.t[m] - traj.t[r])
            total += float(traj.weight[m] * score)
    return total


@pytest.mark.parametrize("count", [4, 5, 7])
def test_dynamic_programming_finds_the_least_error(count):
    """Against every choice of steps that fits the cap and the forced steps (9 steps, K=2, first and last forced)."""
    traj = planner.Trajectories.from_profile(synthetic(n=9, seed=count), max_skips=2, force_first=1, force_last=1)
    best = math.inf
    for inner in itertools.combinations(range(1, 8), count - 2):
        mask = [m in inner or m in (0, 8) for m in range(9)]
        runs = "".join("x" if c else "." for c in mask).split("x")
        if max(len(run) for run in runs) <= 2:
            best = min(best, _cost(traj, mask))
    mask = planner.choose_steps(traj, count)
    assert int(mask.sum()) == count and bool(mask[0]) and bool(mask[8])
    assert _cost(traj, mask.tolist()) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("schedule", planner.SCHEDULES)
def test_plan_hits_the_target_and_a_drifting_sample_computes_more(schedule):
    for target in (5, 7, 9.5):
        plan = planner.plan(synthetic(), target, schedule=schedule)
        assert abs(plan.predicted_nfe - target) <= 0.5, (target, plan)
        assert plan.predicted_nfe == pytest.approx(sum(plan.sample_nfe) / len(plan.sample_nfe))
        assert sum(plan.compute_fraction) == pytest.approx(plan.predicted_nfe)
    drifting = planner.plan(synthetic(scale=[1.0, 1.0, 1.0, 2.0]), 7, schedule=schedule)
    assert drifting.sample_nfe[3] > max(drifting.sample_nfe[:3])


def test_planned_schedule_has_less_predicted_error_than_the_fixed_one():
    """Less where the samples drift alike (5%: real profiles spread 1-3%), at most as much where they do not (the
    fixed table is a candidate of the planned schedule)."""
    for target in (8, 11):  # (5 of 20 steps with K=3 leaves one choice: every fourth step)
        for spread in (0.05, 0.5):
            fixed, planned = (planner.plan(synthetic(n=20, spread=spread), target, schedule=s)
                              for s in planner.SCHEDULES)
            assert abs(planned.predicted_nfe - target) <= abs(fixed.predicted_nfe - target) <= 0.25
            if spread == 0.05:
                assert planned.predicted_error < fixed.predicted_error
            else:
                assert planned.predicted_error <= fixed.predicted_error


def test_measured_output_change_drives_the_plan():
    """With the profile's measured output change (a window of at least K + 1 steps), the predicted error weighs it, not
    the score: a step whose output moves away from every earlier one is computed, and the simulator's error is the
    weighted measured change of the steps it skips; with a shorter window the plan falls back to the score."""
    n, k, hot = 12, 3, 7
    base = synthetic(n=n, samples=3)
    change = torch.full((3, n, k + 1), 1.0, dtype=torch.float64)
    for j in range(1, k + 2):
        change[:, hot - j, j - 1] = 1e3  # reusing any earlier step's output at step `hot` misses a lot
    profile = dataclasses.replace(base, change_samples=change)
    traj = planner.Trajectories.from_profile(profile, max_skips=k)
    assert traj.change is not None and float(traj.change[0, hot - 2, hot]) == 1e3
    assert float(traj.change[0, 2, 3]) == 1.0 and float(traj.change[0, 3, 2]) == 0.0  # only r < m is filled
    for count in (4, 5, 6):
        assert bool(planner.choose_steps(traj, count)[hot]), count
    eps = torch.full((n,), 10.0, dtype=torch.float64)
    computed, error = planner.simulate(traj, eps)
    for s in range(3):
        want, r = 0.0, 0
        for m in range(n):
            if computed[s, m]:
                r = m
            else:
                want += float(traj.weight[m] * traj.change[s, r, m])
        assert float(error[s]) == pytest.approx(want, rel=1e-12)
    assert int((~computed).sum()) > 0
    assert planner.plan(profile, 6, schedule="planned", max_consecutive_skips=k).cost == "measured"
    assert planner.plan(base, 6, schedule="planned", max_consecutive_skips=k).cost == "score"
    short = planner.Trajectories.from_profile(dataclasses.replace(base, change_samples=change[:, :, :k]), max_skips=k)
    plain = planner.Trajectories.from_profile(base, max_skips=k)
    assert short.change is None and torch.equal(short.weight, plain.weight)
    early = torch.arange(n) < 0.2 * n  # the early steps' prior: EARLY_WEIGHT measured, 1 / EPS_START_RATIO bound
    torch.testing.assert_close(traj.weight[early] / plain.weight[early],
                               torch.full((int(early.sum()),), planner.EARLY_WEIGHT * EPS_START_RATIO,
                                          dtype=torch.float64))
    torch.testing.assert_close(traj.weight[~early], plain.weight[~early], rtol=0, atol=0)


def test_profiles_without_trajectories_are_refused():
    p = synthetic()
    old = sencache.SensitivityProfile(timesteps=p.timesteps, jx=p.jx, jt=p.jt, metadata=p.metadata)
    with pytest.raises(ValueError, match=r"no drift_samples, dt.*Recalibrate with sencache.calibrate"):
        sencache.SenCacheConfig(profile=old, target_nfe=6)
    unsized = dataclasses.replace(p, metadata={"transformer_class": "WanTransformer3DModel"})
    with pytest.raises(ValueError, match="latent_numel"):
        planner.plan(unsized, 6)
    with pytest.raises(ValueError, match=r"forecast must be one of \('reuse', 'linear'\), got 'cubic'"):
        planner.plan(p, 6, schedule="planned", forecast="cubic")  # not planned as reuse without a word


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(target_nfe=6, eps=0.1), r"not both; .*eps=None, eps_start=None"),
    (dict(speedup=2, eps_start=0.01), "not both"),
    (dict(schedule="planned"), "give target_nfe=... or speedup"),
    (dict(target_nfe=6, schedule="cubic"), "schedule must be one of"),
    (dict(target_nfe=6, speedup=2), "give one of target_nfe"),
    (dict(speedup=0.5), "speedup must be >= 1"),
    (dict(target_nfe=0.5), r"target_nfe must lie in \[1, 12\]"),
    (dict(target_nfe=float("nan")), "target_nfe must be a finite number"),
    (dict(target_nfe=3, max_consecutive_skips=1), r"out of reach: .* 6.0 of 12 steps"),
    (dict(target_nfe=6, num_inference_steps=30), "num_inference_steps=30"),
])
def test_target_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sencache.SenCacheConfig(profile=synthetic(), **kwargs)


def test_config_with_a_target():
    p = synthetic()
    cfg = sencache.SenCacheConfig(profile=p, speedup=2, schedule="planned")
    assert cfg.eps is None and cfg.eps_start is None and cfg.plan.target_nfe == 6
    assert [cfg.tolerance(k, 12) for k in range(12)] == list(cfg.plan.eps)
    with pytest.raises(ValueError, match=r"planned for target_nfe=6 at 12 steps.*runs 20"):
        cfg.tolerance(0, 20)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.target_nfe = 3
    plain = sencache.SenCacheConfig(profile=p)  # the defaults as before
    assert (plain.eps, plain.eps_start, plain.plan) == (0.07, 0.005, None)
    with pytest.raises(ValueError, match="not both"):
        dataclasses.replace(plain, target_nfe=6)
    moved = dataclasses.replace(plain, target_nfe=6, eps=None, eps_start=None)
    assert moved.plan == planner.plan(p, 6)


def test_cli_plan(tmp_path, capsys):
    p = synthetic()
    p.save(tmp_path / "p.safetensors")
    cli_main(["plan", str(tmp_path / "p.safetensors"), "--steps", "12", "--target-nfe", "7", "--schedule", "planned"])
    out = capsys.readouterr().out.splitlines()
    plan = planner.plan(p, 7, schedule="planned")
    rows = [line.split() for line in out[1:13]]
    assert [float(r[2]) for r in rows] == pytest.approx(plan.eps, rel=1e-4, abs=1e-12)
    assert f"predicted NFE {plan.predicted_nfe:.2f}" in out[13] and "target_nfe=7.0, schedule='planned'" in out[14]
    assert out[13].endswith("(first-order score: no output change recorded)")  # synthetic(): no change_samples
    old = tmp_path / "old.safetensors"
    sencache.SensitivityProfile(timesteps=p.timesteps, jx=p.jx, jt=p.jt, metadata=p.metadata).save(old)
    for argv, match in (([str(old), "--target-nfe", "6"], "Recalibrate"),
                        ([str(tmp_path / "p.safetensors"), "--steps", "50", "--speedup", "2"], "--steps 50")):
        with pytest.raises(SystemExit) as exc:
            cli_main(["plan", *argv])
        assert exc.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.slow
def test_realized_nfe_matches_the_prediction_on_held_out_seeds(pipes):
    """LTX-Video (batched CFG, the last step forced by its adapter): calibrate on 3 seeds, plan half the steps, run 3
    other seeds (other noise and prompt embeddings): the mean realized NFE is within 1 of the prediction, and every
    step compared its scores with the plan's tolerance."""
    from sencache import offline_pipelines as tiny

    arch, steps = "ltx", 10
    pipe = pipes[arch]
    profile = sencache.calibrate(pipe, num_samples=3, seeds=range(3), num_inference_steps=steps, progress=False,
                                 **calibration_kwargs(arch, pipe, steps))
    root_n = math.sqrt(profile.metadata["latent_numel"])
    for schedule in planner.SCHEDULES:
        cfg = sencache.SenCacheConfig(profile=profile, target_nfe=5, schedule=schedule)
        sencache.apply_sencache(pipe, cfg)
        realized = []
        for seed in (100, 101, 102):
            pipe(**tiny.call_kwargs(arch, pipe, seed=seed, num_inference_steps=steps, output_type="latent"))
            stats = sencache.get_stats(pipe)
            realized.append(stats.nfe)
            assert stats.thresholds == pytest.approx([e * root_n for e in cfg.plan.eps], rel=1e-6)
        sencache.remove_sencache(pipe)
        assert abs(sum(realized) / 3 - cfg.plan.predicted_nfe) <= 1.0, (schedule, realized, cfg.plan)
        assert max(realized) < steps and stats.forced[-1]  # skips at run time; the adapter's forced last step


def _with_outputs(n, k, samples=3, seed=0):
    """A profile whose change table is the distances of explicit per-sample outputs ``f [S, n, 5]`` (a curved path:
    the forecast misses some of it), over ``2 k + 1`` steps."""
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(0, 1, n, dtype=torch.float64)[None, :, None]
    bend = torch.rand(samples, 1, 5, generator=g, dtype=torch.float64) * 2
    f = s * torch.randn(samples, 1, 5, generator=g, dtype=torch.float64) + bend * s**3 + 0.05 * torch.randn(
        samples, n, 5, generator=g, dtype=torch.float64)
    change = torch.zeros(samples, n, 2 * k + 1, dtype=torch.float64)
    for j in range(1, 2 * k + 2):
        change[:, :-j, j - 1] = (f[:, j:] - f[:, :-j]).norm(dim=-1)
    return dataclasses.replace(synthetic(n=n, samples=samples, seed=seed), change_samples=change), f


def _forecast_error(traj, f, mask):
    """The mean over samples of the weighted miss of the linear forecast from the last two computed steps."""
    total = torch.zeros(f.shape[0], dtype=torch.float64)
    s0 = s1 = 0
    for m in range(len(mask)):
        if mask[m]:
            s0, s1 = s1, m
            continue
        guess = f[:, s1] if s0 == s1 else f[:, s1] + (f[:, s1] - f[:, s0]) * (m - s1) / (s1 - s0)
        total += traj.weight[m] * (f[:, m] - guess).norm(dim=-1)
    return total


@pytest.mark.parametrize("count", [4, 5, 7])
def test_forecast_plan_costs_what_the_forecast_misses(count):
    """With ``forecast="linear"`` a skip costs the distance of the output from the first-order forecast of the last two
    computed steps, taken from the change table alone; the dynamic programme finds the least of it (against every
    choice of 9 steps, K=2) and the simulator's error is the explicit miss of the steps it skips."""
    n, k = 9, 2
    profile, f = _with_outputs(n, k, seed=count)
    traj = planner.Trajectories.from_profile(profile, max_skips=k, force_first=1, force_last=1, forecast="linear")
    fallback = planner.Trajectories.from_profile(profile, max_skips=3, forecast="linear")  # window too short for K=3
    assert traj.forecast and not fallback.forecast and fallback.change is not None
    torch.testing.assert_close(fallback.weight, planner.Trajectories.from_profile(profile, max_skips=3).weight,
                               rtol=0, atol=0)  # costed as reuse, so weighted as reuse
    reuse = planner.Trajectories.from_profile(profile, max_skips=k, force_first=1, force_last=1)
    early = torch.arange(n) < 0.2 * n  # the forecast's own early factor; the rest of the weight is reuse's
    torch.testing.assert_close(traj.weight[early] / reuse.weight[early],
                               torch.full((int(early.sum()),), planner.FORECAST_EARLY_WEIGHT / planner.EARLY_WEIGHT,
                                          dtype=torch.float64))
    torch.testing.assert_close(traj.weight[~early], reuse.weight[~early], rtol=0, atol=0)
    best = math.inf
    for inner in itertools.combinations(range(1, n - 1), count - 2):
        mask = [m in inner or m in (0, n - 1) for m in range(n)]
        if max(len(run) for run in "".join("x" if c else "." for c in mask).split("x")) <= k:
            best = min(best, float(_forecast_error(traj, f, mask).mean()))
    mask = planner.choose_steps(traj, count)
    assert int(mask.sum()) == count and bool(mask[0]) and bool(mask[-1])
    assert float(_forecast_error(traj, f, mask.tolist()).mean()) == pytest.approx(best, rel=1e-9)
    eps = torch.full((n,), 1e3, dtype=torch.float64)
    computed, error = planner.simulate(traj, eps)
    assert int((~computed).sum()) > 0
    for s in range(f.shape[0]):
        assert float(error[s]) == pytest.approx(float(_forecast_error(traj, f[s:s + 1], computed[s].tolist())[0]),
                                                rel=1e-9)
    plan = planner.plan(profile, count, schedule="planned", max_consecutive_skips=k, force_first_steps=1,
                        force_last_steps=1, forecast="linear")
    assert plan.cost == "forecast" and abs(plan.predicted_nfe - count) <= 0.5
