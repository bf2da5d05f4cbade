"""Property-based fuzzing (hypothesis) of the sencache:: ops against their pure-torch references: the C++ ops
(``torch.ops.sencache.{decide, delta_norm, commit}``; bit for bit) and the fused Triton decision (``decide_triton``,
through the interpreter on the CPU; equal up to float32 summation order), over dtypes, batch sizes, sizes per sample
(0, 1, odd, several chunks), strides, one-element arguments of any shape, drifts from underflow to overflow, NaN/Inf
and extreme state values. Drift norms and scores are also checked against float64.

Budget: a few seconds by default (a fixed set of examples, the same on every run); ``SENCACHE_FUZZ_EXAMPLES=N`` runs N
random examples per test (e.g. 2000 for a longer search). A failure prints the example and a blob to replay it
(``@hypothesis.reproduce_failure``). NaN payload bits may differ between implementations; NaN positions and flags
may not."""

import math
import os

import pytest
import torch

import sencache_kernels as sk
from tests.helpers import DEVICE

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
# Inf/NaN arithmetic is the point here: numpy (the Triton interpreter) warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

_EXAMPLES = int(os.environ.get("SENCACHE_FUZZ_EXAMPLES", "0"))


def budget(default):
    """hypothesis settings: ``default`` derandomized examples, or ``SENCACHE_FUZZ_EXAMPLES`` random ones."""
    return hypothesis.settings(
        max_examples=_EXAMPLES or default, derandomize=not _EXAMPLES, deadline=None, database=None, print_blob=True,
        suppress_health_check=list(hypothesis.HealthCheck),
    )


FLT_MAX = 3.4028234663852886e38
# The Triton norm against the reference's and float64's: as test_decide_triton.NORM_RTOL (float32 sums in another
# order; every term >= 0, so no cancellation).
NORM_RTOL = 1e-5
ONE_ELEMENT_SHAPES = [(), (1,), (1, 1)]
SPECIALS = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e38, -3e38, 1e-45, 65504.0, 2e19]
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
EDGE_F32 = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), FLT_MAX, 1e-45, 1e-38]


def f32(lo, hi):
    """float32 values, mostly in [lo, hi], sometimes anything float32 holds (inf, NaN, negative, subnormal)."""
    return st.one_of(st.floats(lo, hi, width=32), st.floats(lo, hi, width=32), st.floats(width=32),
                     st.sampled_from(EDGE_F32))


@st.composite
def latents(draw):
    """``(x, x_ref)``: a batch of latents with random values at drawn scales, NaN/Inf/extremes at drawn places,
    contiguous or not (a strided batch, or transposed samples that the kernel's launcher must copy)."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    b = draw(st.integers(1, 4))
    p = draw(st.one_of(st.sampled_from([1, 1, 2, 0, 7]), st.integers(0, 40), st.sampled_from([1023, 4097])))
    q = draw(st.sampled_from([1, 1, 2, 3]))
    layout = draw(st.sampled_from(["contiguous", "batch_strided", "transposed"]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    ref_scale = 2.0 ** draw(st.integers(-30, 30))
    drift_scale = 2.0 ** draw(st.sampled_from([-140, -100, -70, -20, -8, 0, 8, 60, 64, 70, 127]))

    def make(values):
        values = values.to(dtype)
        if layout == "batch_strided":
            buf = torch.zeros((2 * b, p, q), dtype=dtype)
            buf[::2] = values
            return buf[::2]
        if layout == "transposed":
            return values.transpose(1, 2).contiguous().transpose(1, 2)
        return values

    ref = torch.randn(b, p, q, generator=g, dtype=torch.float64) * ref_scale
    x = ref + torch.randn(b, p, q, generator=g, dtype=torch.float64) * drift_scale
    n = p * q
    for target in (x, ref):
        if n and draw(st.booleans()):
            for _ in range(draw(st.integers(1, 3))):
                target.view(b, n)[draw(st.integers(0, b - 1)), draw(st.integers(0, n - 1))] = draw(
                    st.sampled_from(SPECIALS))
    return make(x), make(ref)


def one_element(draw, value, dtype):
    """``value`` in a one-element tensor of a drawn shape (or a one-element view into a larger buffer)."""
    shape = draw(st.sampled_from([*ONE_ELEMENT_SHAPES, "view"]))
    if shape == "view":
        buf = torch.zeros(3, dtype=dtype)
        buf[1] = value
        return buf[1:2]
    return torch.tensor(value, dtype=dtype).reshape(shape)


def per_sample(draw, b, lo, hi):
    """A float32 ``[b]`` tensor, contiguous or a strided view."""
    v = torch.tensor([draw(f32(lo, hi)) for _ in range(b)], dtype=torch.float32)
    if draw(st.booleans()):
        buf = torch.zeros(2 * b)
        buf[::2] = v
        return buf[::2]
    return v


@st.composite
def decide_args(draw):
    """Arguments of ``sencache::decide``, every rule of ops.def satisfied, values anywhere float32 allows."""
    x, x_ref = draw(latents())
    b = x.shape[0]
    k = draw(st.sampled_from([0, 1, 2, 3, 2**31 - 1]))
    return dict(
        x=x, t=per_sample(draw, b, 0, 1000), jx_now=per_sample(draw, b, 0, 10), jt_now=per_sample(draw, b, 0, 1),
        eps=one_element(draw, draw(f32(0, 10)), torch.float32),
        force=one_element(draw, draw(st.booleans()), torch.bool),
        x_ref=x_ref, t_ref=per_sample(draw, b, 0, 1000), jx_ref=per_sample(draw, b, 0, 10),
        jt_ref=per_sample(draw, b, 0, 1),
        skips=one_element(draw, draw(st.sampled_from([0, 1, 2, 3, 2**31 - 1])), torch.int32),
        flag=one_element(draw, draw(st.integers(0, 3)), torch.int32),
        score=per_sample(draw, b, 0, 1),
        ticket=one_element(draw, 0, torch.int32),
        max_skips=k,
    )


def clone(args, device="cpu"):
    """A copy of the arguments (same shapes and strides) on ``device``."""
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            c = torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=device)
            c.copy_(v)
            v = c
        out[k] = v
    return out


def assert_same_bits(a, b, what):
    """Equal shapes, dtypes and bits, except that a NaN may have any payload (its position must match)."""
    a, b = a.cpu(), b.cpu()
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape)
    if a.is_floating_point():
        nan_a, nan_b = torch.isnan(a), torch.isnan(b)
        assert torch.equal(nan_a, nan_b), (what, a, b)
        ints = {torch.float64: torch.int64, torch.float32: torch.int32}.get(a.dtype, torch.int16)
        a, b = a.masked_fill(nan_a, 0).view(ints), b.masked_fill(nan_b, 0).view(ints)
    assert torch.equal(a, b), (what, a, b)


def drift64(x, x_ref):
    """Per-sample float64 sum of squares and norm of the float32 drift ``x.float() - x_ref.float()`` (the value both
    implementations reduce), and the number of elements per sample."""
    b = x.shape[0]
    diff = (x.float() - x_ref.float()).double().reshape(b, -1)
    ss = (diff * diff).sum(1)
    return ss, ss.sqrt(), diff.shape[1]


def check_score_against_float64(args, score):
    """Where the float64 reduction stays in float32's range, the float32 score is within the summation error of the
    float64 one (plus the squares lost to underflow); a sum of squares past float32's range is inf (the contract)."""
    x, x_ref = args["x"].cpu(), args["x_ref"].cpu()
    ss, d64, n = drift64(x, x_ref)
    jx, jt = args["jx_ref"].double().cpu(), args["jt_ref"].double().cpu()
    dt = (args["t"].cpu() - args["t_ref"].cpu()).abs().double()  # float32 subtraction, as both implementations
    s64 = jx * d64 + jt * dt
    score = score.cpu().double()
    for i in range(x.shape[0]):
        terms = (float(jx[i]), float(d64[i]), float(jt[i]), float(dt[i]), float(s64[i]))
        if not all(math.isfinite(v) and v >= 0 for v in terms) or float(s64[i]) > FLT_MAX * 0.5:
            continue  # a NaN/Inf input, or a score near float32's end: compared with the reference instead
        if n > 1 and float(ss[i]) > FLT_MAX * (1 - 1e-5):
            if float(ss[i]) > FLT_MAX * (1 + 1e-5):  # the drift is inf: the score too, or NaN where jx_ref = 0
                want = math.isinf if float(jx[i]) > 0 else math.isnan
                assert want(float(score[i])), (i, float(ss[i]), float(score[i]))
            continue
        atol = float(jx[i]) * math.sqrt(n) * 2.0**-74 + 2.0**-149  # squares under float32's subnormals are lost
        err = abs(float(score[i]) - float(s64[i]))
        assert err <= (NORM_RTOL + 4 * 2.0**-24) * float(s64[i]) + atol, (i, float(score[i]), float(s64[i]))


def ambiguous(args, ref_score):
    """Whether the kernel's drift norm, the same float32 squares summed in another order (within ``NORM_RTOL``), could
    change the decision: a score whose drift term could move it across the threshold or past float32's largest value,
    or a sum of squares that close to float32's largest value. One element per sample, or no drift, is exact."""
    n = args["x"][0].numel()
    if n <= 1:
        return False
    thr = float(args["eps"].reshape(())) * float(torch.tensor(float(n)).sqrt())
    d = sk.delta_norm_ref(args["x"].cpu(), args["x_ref"].cpu()).double()
    ss, _, _ = drift64(args["x"].cpu(), args["x_ref"].cpu())
    for s, dd, jx, q in zip(ref_score.double().tolist(), d.tolist(), args["jx_ref"].double().tolist(), ss.tolist(),
                            strict=True):
        if abs(q - FLT_MAX) <= 4 * NORM_RTOL * FLT_MAX:
            return True
        if not (math.isfinite(s) and dd != 0 and jx != 0):
            continue  # no drift term, or NaN/Inf, which both implementations get from the same values
        slack = 2 * (NORM_RTOL * abs(jx * dd) + 4 * 2.0**-24 * abs(s)) + 2.0**-140
        if abs(s - thr) <= slack or abs(s) > FLT_MAX - slack:
            return True
    return False


STATE = ("x_ref", "t_ref", "jx_ref", "jt_ref", "skips", "flag", "score", "ticket")


@budget(40)
@hypothesis.given(args=decide_args())
def test_fuzz_decide_op_equals_reference(args):
    """The registered op (C++ CPU kernel with the extension) and ``decide_ref``: the same state, bit for bit."""
    op, ref = clone(args), clone(args)
    sk.decide(**op)
    sk.decide_ref(**ref)
    for k in STATE:
        assert_same_bits(op[k], ref[k], k)
    check_score_against_float64(args, ref["score"])


@budget(15)
@hypothesis.given(args=decide_args(), block=st.sampled_from([128, 1024, None]), max_chunks=st.integers(1, 4))
def test_fuzz_decide_triton_equals_reference(args, block, max_chunks):
    """The fused Triton kernel and ``decide_ref``: the same flags and state; scores within the float32 summation
    tolerance of the reference's and of float64's (decisions compared unless a score is that close to the threshold)."""
    ref = clone(args)
    sk.decide_ref(**ref)
    tri = clone(args, DEVICE)
    sk.decide_triton(**tri, block=block, max_chunks=max_chunks)
    assert int(tri["ticket"].reshape(())) == 0 and tri["ticket"].shape == args["ticket"].shape
    assert_same_bits(tri["x_ref"], args["x_ref"], "x_ref")  # read only
    check_score_against_float64(args, tri["score"])
    s_tri, s_ref = tri["score"].cpu(), ref["score"]
    assert torch.equal(torch.isnan(s_tri), torch.isnan(s_ref)), (s_tri, s_ref)
    near_end = s_ref.abs() > FLT_MAX * (1 - 4 * NORM_RTOL)
    torch.testing.assert_close(s_tri[~near_end], s_ref[~near_end], rtol=NORM_RTOL, atol=2.0**-140, equal_nan=True)
    near = ambiguous(args, s_ref)
    hypothesis.event("a score near the threshold: decision not compared" if near else "decision compared")
    if near:
        return
    for k in ("flag", "skips", "t_ref", "jx_ref", "jt_ref"):
        assert_same_bits(tri[k], ref[k], k)


@st.composite
def commit_args(draw):
    src, base = draw(latents())
    dst = torch.full(src.shape, -7.0, dtype=src.dtype)  # what a skipped step must leave in place
    flag = one_element(draw, draw(st.integers(0, 3)), torch.int32)
    return dict(flag=flag, src=src, base=base if draw(st.booleans()) else None, dst=dst)


@budget(40)
@hypothesis.given(args=commit_args())
def test_fuzz_commit_op_equals_reference(args):
    """``sencache::commit`` and ``commit_ref``: dst bit for bit, written only when the flag has the COMPUTE bit."""
    op, ref = clone(args), clone(args)
    sk.commit(**op)
    sk.commit_ref(**ref)
    assert_same_bits(op["dst"], ref["dst"], "dst")
    if not int(args["flag"].reshape(())) & sk.COMPUTE:
        assert_same_bits(op["dst"], args["dst"], "dst kept")


@budget(40)
@hypothesis.given(pair=latents())
def test_fuzz_delta_norm_op_equals_reference(pair):
    """``sencache::delta_norm`` and ``delta_norm_ref`` bit for bit, and float64 where the squares stay in range."""
    x, x_ref = pair
    d = sk.delta_norm(x, x_ref)
    assert_same_bits(d, sk.delta_norm_ref(x, x_ref), "delta_norm")
    b = x.shape[0]
    unit = dict(x=x, x_ref=x_ref, jx_ref=torch.ones(b), jt_ref=torch.zeros(b), t=torch.zeros(b), t_ref=torch.zeros(b))
    check_score_against_float64(unit, d)

