import pytest
import torch

import sencache_kernels as sk
from tests.helpers import DEVICE, requires_cuda

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


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(dst=torch.zeros(2, 4)), "dst must match src|dst must have src's shape"),
        (dict(dst=torch.zeros(2, 3, dtype=torch.float64)), "dst must"),
        (dict(base=torch.zeros(3, 2)), "base must"),
        (dict(flag=torch.zeros((), dtype=torch.int64)), "flag must"),
        (dict(flag=torch.zeros(2, dtype=torch.int32)), "flag must"),
        (dict(src=torch.zeros(2, 3, dtype=torch.int32), dst=torch.zeros(2, 3, dtype=torch.int32)), "src must"),
    ],
)
def test_commit_bad_arguments(change, match, gen):
    a = dict(flag=flag(1), src=torch.randn(2, 3, generator=gen), base=None, dst=torch.zeros(2, 3))
    a.update(change)
    with pytest.raises(ValueError, match=match):
        sk.commit(**a)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
@pytest.mark.parametrize("with_base", [False, True])
def test_commit_opcheck(device, with_base, gen):
    src = torch.randn(2, 37, generator=gen).to(device).bfloat16()
    base = torch.randn(2, 37, generator=gen).to(device).bfloat16() if with_base else None
    for value in (0, 1):
        torch.library.opcheck(torch.ops.sencache.commit.default,
                              (flag(value, device), src, base, torch.zeros_like(src)))


def test_set_conditional_on_cpu_says_what_to_do():
    with pytest.raises((ValueError, RuntimeError), match="CUDA"):
        torch.ops.sencache.set_conditional(flag(1), 12345)
    with pytest.raises(ValueError, match="handle is 0"):
        torch.ops.sencache.set_conditional(flag(1), 0)
    with pytest.raises(ValueError, match="flag must"):
        torch.ops.sencache.set_conditional(torch.zeros(2, dtype=torch.int32), 1)


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
