"""sencache::commit: the reference bit for bit on every dtype and device, strided tensors, its checks (the same in C++
and in the Python fallback), its Meta kernel and fake, opcheck, tracing."""

import pytest
import torch

import sencache_kernels as sk
from tests.helpers import DEVICE, assert_same_errors_as_fallback, requires_cuda, run_without_extension

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def flag(value, device="cpu"):
    return torch.tensor(value, dtype=torch.int32, device=device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("value", [0, sk.COMPUTE, sk.NONFINITE, sk.COMPUTE | sk.NONFINITE])
def test_commit_equals_reference_bitwise(device, dtype, with_base, value, gen):
    src = torch.randn(3, 1029, generator=gen).to(dtype).to(device)
    base = torch.randn(3, 1029, generator=gen).to(dtype).to(device) if with_base else None
    dst = torch.randn(3, 1029, generator=gen).to(dtype).to(device)
    want = dst.clone()
    sk.commit_ref(flag(value, device), src, base, want)
    before = dst.clone()
    sk.commit(flag(value, device), src, base, dst)
    assert torch.equal(dst, want)
    if value & sk.COMPUTE:  # the update happened, and it is exactly src - base rounded once
        assert torch.equal(dst, src if base is None else src - base)
    else:
        assert torch.equal(dst, before)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_commit_strided_destination(device, gen):
    src = torch.randn(4, 6, generator=gen).to(device)
    base = torch.randn(6, 4, generator=gen).to(device).t()  # non-contiguous
    dst = torch.zeros(6, 4, device=device).t()
    sk.commit(flag(sk.COMPUTE, device), src, base, dst)
    assert torch.equal(dst, src - base)


SCHEMA = "commit(Tensor flag, Tensor src, Tensor? base, Tensor(a!) dst) -> ()"


def bad_cases():
    """Argument tuples (flag, src, base, dst) that break a rule of commit in ops.def, each with its message."""
    g = torch.Generator().manual_seed(5)
    src = torch.randn(2, 3, generator=g)
    i32 = torch.zeros(2, 3, dtype=torch.int32)
    return [
        ((flag(1), i32, None, i32.clone()),
         "src must be torch.float32, torch.float16, torch.bfloat16 or torch.float64, got torch.int32"),
        ((flag(1), src, None, torch.zeros(2, 4)), r"dst must have src's shape \[2, 3\], got \[2, 4\]"),
        ((flag(1), src, None, torch.zeros(2, 3, dtype=torch.float64)), "dst must have src's dtype torch.float32"),
        ((flag(1), src, torch.zeros(3, 2), torch.zeros(2, 3)), r"base must have src's shape \[2, 3\], got \[3, 2\]"),
        ((flag(1), src, src.half(), torch.zeros(2, 3)), "base must have src's dtype torch.float32, got torch.float16"),
        ((flag(1), src, None, torch.zeros(2, 3, device="meta")), "dst is on meta but src is on cpu"),
        ((flag(1), src, src.to("meta"), torch.zeros(2, 3)), "base is on meta but src is on cpu"),
        ((torch.zeros((), dtype=torch.int64), src, None, torch.zeros(2, 3)),
         "flag must be a one-element torch.int32 tensor, got torch.int64 of shape"),
        ((torch.zeros(2, dtype=torch.int32), src, None, torch.zeros(2, 3)),
         r"flag must be a one-element torch.int32 tensor, got torch.int32 of shape \[2\]; pass the flag written"),
        ((flag(1, "meta"), src, None, torch.zeros(2, 3)), "flag is on meta but src is on cpu"),
    ]


@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_commit_bad_arguments(case):
    args, match = bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        sk.commit(*args)
    if all(a is None or a.device.type == "cpu" for a in args):  # the Meta kernel (the fake) checks the same way
        with pytest.raises(ValueError, match=match):
            sk.commit(*(None if a is None else a.to("meta") for a in args))


def test_commit_errors_identical_in_fallback():
    assert_same_errors_as_fallback("commit", [args for args, _ in bad_cases()])


def test_commit_schema():
    assert sk.SCHEMAS["commit"] == SCHEMA
    assert str(torch.ops.sencache.commit.default._schema) == "sencache::" + SCHEMA


def test_commit_meta_kernel(gen):
    src = torch.randn(2, 5, generator=gen).to("meta")
    assert sk.commit(flag(1, "meta"), src, src, torch.empty_like(src)) is None
    with torch._subclasses.FakeTensorMode() as mode:
        fsrc = mode.from_tensor(torch.randn(2, 5, generator=gen))
        sk.commit(mode.from_tensor(flag(1)), fsrc, None, torch.empty_like(fsrc))


def test_commit_fallback_passes_opcheck_and_agrees(gen):
    src, base, dst = (torch.randn(3, 17, generator=gen) for _ in range(3))
    cases = [(flag(v), src, b, dst.clone()) for v in (0, sk.COMPUTE) for b in (None, base)]
    got = run_without_extension(
        "for a in inputs:\n"
        "    copy = tuple(v if v is None else v.clone() for v in a)\n"
        "    torch.library.opcheck(torch.ops.sencache.commit.default, copy)\n"
        "    sk.commit(*a)\n"
        "result = [a[3] for a in inputs]", cases)
    for (f, s_, b, d), out in zip(cases, got, strict=True):
        sk.commit(f, s_, b, d)
        assert torch.equal(out, d)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("with_base", [False, True])
def test_commit_opcheck(device, with_base, gen):
    src = torch.randn(2, 37, generator=gen).to(device).bfloat16()
    base = torch.randn(2, 37, generator=gen).to(device).bfloat16() if with_base else None
    for value in (0, 1):
        torch.library.opcheck(torch.ops.sencache.commit.default,
                              (flag(value, device), src, base, torch.zeros_like(src)))


def test_commit_traces_without_graph_breaks(gen):
    def step(f, x, x_ref, out, inp, res):
        sk.commit(f, x, None, x_ref)
        sk.commit(f, out, inp, res)
        return res * 2

    args = (flag(1, DEVICE),) + tuple(torch.randn(2, 9, generator=gen).to(DEVICE) for _ in range(5))
    explanation = torch._dynamo.explain(step)(*[a.clone() for a in args])
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for value in (1, 0):
        e = [a.clone() for a in args]
        c = [a.clone() for a in args]
        e[0].fill_(value)
        c[0].fill_(value)
        assert torch.equal(step(*e), compiled(*c))
        assert all(torch.equal(u, v) for u, v in zip(e, c, strict=True))
