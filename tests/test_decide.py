"""sencache::decide: the C++ op and the reference bit for bit over trajectories, the policy by hand, its checks (the
same in C++ and in the Python fallback), its Meta kernel and fake, opcheck and tracing. The fused Triton kernel is
tested in test_decide_triton.py."""

import math

import pytest
import torch

import sencache_kernels as sk
from tests.helpers import (
    DECIDE_STATE,
    assert_same_errors_as_fallback,
    clone_args,
    make_args,
    run_without_extension,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("per_sample", [1, 7, 1023, 4097])
def test_trajectory_op_equals_reference(dtype, batch, per_sample, gen):
    """A whole synthetic trajectory: the op and the reference take the same decisions and reach the same bits."""
    x = torch.randn(batch, per_sample, generator=gen).to(dtype)
    a = make_args(x, gen, eps=0.02, force=True, max_skips=2)
    b = clone_args(a)
    decisions = []
    t = 1000.0
    for step in range(12):
        t -= 37.5
        step_scale = 0.002 if step % 4 else 0.2  # mostly small moves, sometimes a jump
        x = (x.float() + step_scale * torch.randn(x.shape, generator=gen)).to(dtype)
        tt = torch.full((batch,), t)
        jx = torch.rand(batch, generator=gen) + 0.5
        jt = torch.rand(batch, generator=gen) * 1e-4
        for args, fn, commit in ((a, sk.decide, sk.commit), (b, sk.decide_ref, sk.commit_ref)):
            args.update(x=x, t=tt, jx_now=jx, jt_now=jt, force=torch.tensor(step == 0))
            fn(**args)
            commit(args["flag"], x, None, args["x_ref"])
        for k in DECIDE_STATE:
            assert torch.equal(a[k], b[k]), (step, k)
        decisions.append(int(a["flag"]) & sk.COMPUTE)
    assert 0 in decisions and 1 in decisions[1:], decisions  # the trajectory exercises both outcomes


def test_decision_semantics_by_hand():
    """Hand-computed: score = jx*||dx|| + jt*|dt| against eps*sqrt(n), K, force, state refresh."""
    x_ref = torch.zeros(2, 4)
    args = dict(
        x=torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]),  # drifts 5 and 1
        t=torch.tensor([90.0, 90.0]), jx_now=torch.tensor([7.0, 7.0]), jt_now=torch.tensor([9.0, 9.0]),
        eps=torch.tensor(3.0), force=torch.tensor(False), x_ref=x_ref,
        t_ref=torch.tensor([100.0, 100.0]), jx_ref=torch.tensor([1.0, 0.5]), jt_ref=torch.tensor([0.1, 0.2]),
        skips=torch.zeros((), dtype=torch.int32), flag=torch.zeros((), dtype=torch.int32),
        score=torch.zeros(2), ticket=torch.zeros((), dtype=torch.int32), max_skips=1,
    )
    # scores: 1*5 + 0.1*10 = 6 and 0.5*1 + 0.2*10 = 2.5; threshold 3*sqrt(4) = 6 -> both ok -> skip
    sk.decide(**args)
    assert args["score"].tolist() == [6.0, 2.5]
    assert int(args["flag"]) == 0 and int(args["skips"]) == 1
    assert torch.equal(args["x_ref"], torch.zeros(2, 4)) and args["t_ref"].tolist() == [100.0, 100.0]
    # same input again: K=1 reached -> compute, state refreshed from t, jx_now, jt_now; x_ref is commit's job
    sk.decide(**args)
    assert int(args["flag"]) == sk.COMPUTE and int(args["skips"]) == 0
    assert torch.equal(args["x_ref"], torch.zeros(2, 4)) and args["t_ref"].tolist() == [90.0, 90.0]
    sk.commit(args["flag"], args["x"], None, args["x_ref"])
    assert torch.equal(args["x_ref"], args["x"])
    assert args["jx_ref"].tolist() == [7.0, 7.0] and args["jt_ref"].tolist() == [9.0, 9.0]
    # one sample over the threshold -> the batch computes
    args.update(x=args["x"] + torch.tensor([[0.0], [1.0]]), t=torch.tensor([90.0, 90.0]))
    sk.decide(**args)  # sample 1 drift 2 -> 7*2 = 14 > 6
    assert int(args["flag"]) == sk.COMPUTE
    sk.commit(args["flag"], args["x"], None, args["x_ref"])
    # forced step computes even with zero drift
    args.update(force=torch.tensor(True))
    sk.decide(**args)
    assert args["score"].tolist() == [0.0, 0.0] and int(args["flag"]) == sk.COMPUTE


def test_nonfinite_latent_computes_and_flags(gen):
    x = torch.randn(2, 16, generator=gen)
    a = make_args(x, gen, eps=1e9)  # everything would be skipped...
    a["x"] = x.clone()
    a["x"][1, 3] = float("nan")
    sk.decide(**a)  # ...but a NaN never skips
    assert int(a["flag"]) == sk.COMPUTE | sk.NONFINITE
    b = make_args(x, gen, eps=1e9)
    b["x"] = x.clone()
    b["x"][0, 0] = float("inf")
    sk.decide(**b)
    assert int(b["flag"]) == sk.COMPUTE | sk.NONFINITE


def test_eps_zero_never_skips_moving_latent(gen):
    x = torch.randn(2, 33, generator=gen)
    a = make_args(x, gen, eps=0.0, max_skips=100)
    sk.decide(**a)
    assert int(a["flag"]) == sk.COMPUTE


SCHEMA = (
    "decide(Tensor x, Tensor t, Tensor jx_now, Tensor jt_now, Tensor eps, Tensor force, Tensor x_ref, "
    "Tensor(a!) t_ref, Tensor(b!) jx_ref, Tensor(c!) jt_ref, Tensor(d!) skips, Tensor(e!) flag, "
    "Tensor(f!) score, Tensor(g!) ticket, int max_skips) -> ()"
)

# (change to make_args of a [2, 8] latent, message): one case per rule of decide in ops.def
BAD = [
    (dict(x=torch.zeros(()), x_ref=torch.zeros(())), "x must have a batch dimension"),
    (dict(x=torch.zeros(0, 8), x_ref=torch.zeros(0, 8)), "x must hold at least one sample"),
    (dict(x=torch.zeros(2, 8, dtype=torch.int32), x_ref=torch.zeros(2, 8, dtype=torch.int32)),
     "x must be torch.float32, torch.float16, torch.bfloat16 or torch.float64, got torch.int32"),
    (dict(x_ref=torch.zeros(2, 8, dtype=torch.bfloat16)),
     "x_ref must have x's dtype torch.float32, got torch.bfloat16; allocate the reference with torch.empty_like"),
    (dict(x_ref=torch.zeros(2, 9)), r"x_ref must have x's shape \[2, 8\], got \[2, 9\]"),
    (dict(t=torch.zeros(2, dtype=torch.float64)),
     r"t must be torch.float32, got torch.float64; convert it with t.to\(torch.float32\)"),
    (dict(score=torch.zeros(3)),
     r"score must have shape \[B\] = \[2\] \(one value per sample of x\), got shape \[3\]"),
    (dict(jt_ref=torch.zeros(2, 1)), r"jt_ref must have shape \[B\] = \[2\]"),
    (dict(eps=torch.zeros(2)), r"eps must be a one-element torch.float32 tensor, got torch.float32 of shape \[2\]"),
    (dict(force=torch.tensor(1)), "force must be a one-element torch.bool tensor, got torch.int64"),
    (dict(skips=torch.zeros((), dtype=torch.int64)), "skips must be a one-element torch.int32 tensor"),
    (dict(flag=torch.zeros((), dtype=torch.float32)), "flag must be a one-element torch.int32 tensor"),
    (dict(ticket=torch.zeros(2, dtype=torch.int32)), "ticket must be a one-element torch.int32 tensor.*and keep it"),
    (dict(max_skips=-1), r"max_skips must be in \[0, 2147483647\], got -1; 0 disables skipping"),
    (dict(max_skips=2**31), r"max_skips must be in \[0, 2147483647\], got 2147483648"),
    (dict(t_ref=torch.zeros(2, device="meta")), r"t_ref is on meta but x is on cpu; move it with t_ref.to\(x.device\)"),
    (dict(ticket=torch.zeros((), dtype=torch.int32, device="meta")), "ticket is on meta but x is on cpu"),
]


def bad_args(case):
    a = make_args(torch.randn(2, 8, generator=torch.Generator().manual_seed(case)), torch.Generator().manual_seed(9))
    a.update(BAD[case][0])
    return a


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments_raise_clear_errors(case):
    a = bad_args(case)
    with pytest.raises(ValueError, match=BAD[case][1]):
        sk.decide(**a)
    if all(v.device.type == "cpu" for v in a.values() if isinstance(v, torch.Tensor)):
        meta = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in a.items()}
        with pytest.raises(ValueError, match=BAD[case][1]):  # the Meta kernel (the fake) checks the same way
            sk.decide(**meta)


def test_decide_errors_identical_in_fallback():
    assert_same_errors_as_fallback("decide", [tuple(bad_args(case).values()) for case in range(len(BAD))])


def test_decide_meta_kernel(gen):
    a = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in make_args(torch.randn(3, 5), gen).items()}
    assert sk.decide(**a) is None
    with torch._subclasses.FakeTensorMode() as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v
                for k, v in make_args(torch.randn(3, 5), gen).items()}
        sk.decide(**fake)


def test_mixed_devices_raise(gen):
    a = make_args(torch.randn(2, 8, generator=gen), gen)
    a["t_ref"] = a["t_ref"].to("meta")
    with pytest.raises(ValueError, match="t_ref is on meta"):
        sk.decide(**a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decide_opcheck(dtype, gen):
    a = make_args(torch.randn(2, 13, generator=gen).to(dtype), gen)
    torch.library.opcheck(torch.ops.sencache.decide.default, tuple(a.values()))


def test_state_module_matches_functional_op(gen):
    x = torch.randn(2, 3, 5, generator=gen)
    st = sk.DecisionState(x)
    t = torch.full((2,), 800.0)
    j = torch.rand(2, generator=gen)
    assert st.decide(x, t, j, j, 0.1, True, 2) == sk.COMPUTE
    assert st.read_flag() == sk.COMPUTE and torch.equal(st.x_ref, x)
    assert st.decide(x, t, j, j, 0.1, False, 2) == 0  # no drift at all: skip
    assert st.read_flag() == 0 and int(st.skips) == 1
    assert st.matches(x) and not st.matches(x.double())


def test_eager_decide_equals_device_step(gen):
    """The eager path (decide op, host read, ``x_ref <- x`` by the host's branch; scores to a given tensor) leaves the
    same state, bit for bit, as the device path (``set_inputs`` + ``step``: decide op + ``commit``)."""
    x0 = torch.randn(2, 3, 5, generator=gen)
    eager, device = sk.DecisionState(x0), sk.DecisionState(x0)
    j = torch.rand(2, generator=gen) + 0.5
    kinds = set()
    for k in range(12):
        x = x0 + 0.02 * k * torch.randn(2, 3, 5, generator=gen)
        t = torch.full((2,), 900.0 - 10 * k)
        eps, force = (0.05 if k % 3 else 0.2), k == 0
        scores = torch.full((2,), float("nan"))
        flag = eager.decide(x, t, j, j * 1e-3, eps, force, 2, scores)
        device.set_inputs(eps, force)
        device.step(x, t, j, j * 1e-3, 2)
        assert flag == int(device.flag)
        kinds.add(flag & sk.COMPUTE)
        assert torch.equal(scores, device.score)
        for name, buf in device.named_buffers():
            if name != "score":  # the eager state's score buffer was left out: the scores went to `scores`
                assert torch.equal(getattr(eager, name), buf), (k, name)
    assert kinds == {0, sk.COMPUTE}  # both branches taken


def test_compile_fullgraph_no_graph_break(gen):
    x = torch.randn(2, 40, generator=gen)
    a = make_args(x, gen)

    def step(x, t, jx, jt, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket):
        d = sk.delta_norm(x, x_ref)
        sk.decide(x, t, jx, jt, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket, 2)
        sk.commit(flag, x, None, x_ref)
        return d * 2

    args = tuple(v for k, v in a.items() if k != "max_skips")
    explanation = torch._dynamo.explain(step)(*clone_tuple(args))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    ea, ca = clone_tuple(args), clone_tuple(args)
    for _ in range(3):
        assert torch.equal(step(*ea), compiled(*ca))
        for u, v in zip(ea, ca, strict=True):
            assert torch.equal(u, v)


def clone_tuple(args):
    return tuple(v.clone() for v in args)


def test_decide_schema():
    assert sk.SCHEMAS["decide"] == SCHEMA
    assert str(torch.ops.sencache.decide.default._schema) == "sencache::" + SCHEMA


def test_reference_fallback_without_extension():
    """With the extension disabled the same op exists, passes opcheck, and gives the same decision."""
    g = torch.Generator().manual_seed(0)
    a = make_args(torch.randn(2, 9, generator=g), g)
    got = run_without_extension(
        "torch.library.opcheck(torch.ops.sencache.decide.default, tuple(v.clone() if isinstance(v, torch.Tensor)\n"
        "                      else v for v in inputs.values()))\n"
        "sk.decide(**inputs)\n"
        "result = inputs", a)
    sk.decide(**a)
    for k in DECIDE_STATE:
        assert torch.equal(got[k], a[k]), k


def test_threshold_scales_with_sqrt_numel():
    """eps is RMS per element: the same per-element drift gives the same decision at any size."""
    for n in (4, 400, 40000):
        x = torch.full((1, n), 0.1)
        a = dict(x=x, t=torch.tensor([1.0]), jx_now=torch.ones(1), jt_now=torch.zeros(1), eps=torch.tensor(0.1001),
                 force=torch.tensor(False), x_ref=torch.zeros(1, n), t_ref=torch.tensor([1.0]), jx_ref=torch.ones(1),
                 jt_ref=torch.zeros(1), skips=torch.zeros((), dtype=torch.int32),
                 flag=torch.zeros((), dtype=torch.int32), score=torch.zeros(1),
                 ticket=torch.zeros((), dtype=torch.int32), max_skips=3)
        sk.decide(**a)
        assert int(a["flag"]) == 0, n
        # float32 accumulation of n terms: relative error bounded by about n * 2**-24
        assert math.isclose(float(a["score"]), 0.1 * math.sqrt(n), rel_tol=n * 2.0**-24)


# The one-element arguments of decide, from its SCALAR rules in ops.def (the contract: one element, any shape).
ONE_ELEMENT_ARGS = [a for kind, args, *_ in sk.ops.RULES["decide"] if kind == "SCALAR" for a in args.split()]


def one_element_like(v, shape):
    """``v``'s value in a one-element tensor of ``shape``; ``"view"``: a one-element view into a larger buffer."""
    if shape == "view":
        buf = torch.zeros(3, dtype=v.dtype)
        buf[1] = v.reshape(())
        return buf[1:2]
    return v.reshape(shape).clone()


@pytest.mark.parametrize("shape", [(1,), (1, 1), "view"])
@pytest.mark.parametrize("arg", ONE_ELEMENT_ARGS)
def test_one_element_arguments_of_any_shape_agree_with_reference(arg, shape, gen):
    """What the op accepts, the reference accepts and decides the same way (issue 15: a [1] force or skips): forced,
    skipped twice (no drift), then computed at K = 2, with ``arg`` as a one-element tensor of another shape."""
    assert set(ONE_ELEMENT_ARGS) == {"eps", "force", "skips", "flag", "ticket"}
    x = torch.randn(2, 8, generator=gen)
    outcomes = []
    for step, (force, skips) in enumerate([(True, 0), (False, 0), (False, 1), (False, 2)]):
        a = make_args(x, gen, eps=0.5, force=force, max_skips=2)
        a.update(x_ref=x.clone(), t_ref=a["t"].clone(), skips=torch.tensor(skips, dtype=torch.int32))
        a[arg] = one_element_like(a[arg], shape)
        b = clone_args(a)
        sk.decide(**a)
        sk.decide_ref(**b)
        for k in DECIDE_STATE:
            assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), (step, k)
        assert a[arg].shape == ((1,) if shape == "view" else shape)  # written in place, its shape kept
        outcomes.append((int(a["flag"]), int(a["skips"].reshape(()))))
    assert outcomes == [(sk.COMPUTE, 0), (0, 1), (0, 2), (sk.COMPUTE, 0)]
