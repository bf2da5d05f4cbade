"""sencache::delta_norm: against float64, the reference bit for bit, its checks (the same in C++ and in the Python
fallback), its Meta kernel and fake, opcheck."""

import pytest
import torch

import sencache_kernels as sk
from tests.helpers import assert_same_errors_as_fallback, run_without_extension

TOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}  # vs float64 of the same (rounded) inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [1, 7, 1023, 4097])
@pytest.mark.parametrize("batch", [1, 3])
def test_delta_norm_matches_float64(dtype, per_sample, batch, gen):
    x = torch.randn(batch, per_sample, generator=gen).to(dtype)
    r = torch.randn(batch, per_sample, generator=gen).to(dtype)
    want = torch.linalg.vector_norm((x.double() - r.double()), dim=1)
    for fn in (sk.delta_norm_ref, sk.delta_norm):
        got = fn(x, r)
        assert got.dtype == torch.float32 and got.shape == (batch,)
        torch.testing.assert_close(got.double(), want, rtol=TOL[dtype], atol=0)


def test_op_equals_reference_bitwise_noncontiguous(gen):
    x = torch.randn(2, 5, 6, 7, generator=gen).transpose(1, 3)
    r = torch.randn(2, 7, 6, 9, generator=gen)[..., ::2][..., :5]
    assert not x.is_contiguous() and not r.is_contiguous()
    assert torch.equal(sk.delta_norm(x, r), sk.delta_norm_ref(x, r))
    assert torch.equal(sk.delta_norm(x, r), sk.delta_norm_ref(x.contiguous(), r.contiguous()))


def test_delta_norm_shape_mismatch_is_clear(gen):
    x = torch.randn(2, 8, generator=gen)
    with pytest.raises(ValueError, match="x_ref must"):
        sk.delta_norm(x, torch.randn(2, 9, generator=gen))
    with pytest.raises(ValueError, match="x_ref must"):
        sk.delta_norm(x, x.to(torch.bfloat16))


def test_delta_norm_opcheck(gen):
    x = torch.randn(3, 11, generator=gen)
    torch.library.opcheck(torch.ops.sencache.delta_norm.default, (x, torch.randn(3, 11, generator=gen)))


SCHEMA = "delta_norm(Tensor x, Tensor x_ref) -> Tensor"


def bad_cases():
    """One argument tuple per rule of delta_norm in ops.def (and the message each must raise)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, generator=g)
    return [
        ((torch.randn((), generator=g), torch.randn((), generator=g)), "x must have a batch dimension"),
        ((torch.randn(0, 3, generator=g), torch.randn(0, 3, generator=g)), r"at least one sample .*got shape \[0, 3\]"),
        ((x.int(), x.int()),
         "x must be torch.float32, torch.float16, torch.bfloat16 or torch.float64, got torch.int32"),
        ((x, x.double()), "x_ref must have x's dtype torch.float32, got torch.float64"),
        ((x, torch.randn(2, 9, generator=g)), r"x_ref must have x's shape \[2, 8\], got \[2, 9\]"),
        ((x, x.to("meta")), r"x_ref is on meta but x is on cpu; move it with x_ref.to\(x.device\)"),
    ]


@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_delta_norm_bad_arguments(case):
    args, match = bad_cases()[case]
    with pytest.raises(ValueError, match=match):
        sk.delta_norm(*args)
    if all(a.device.type == "cpu" for a in args):  # the Meta kernel (the fake) checks the same way
        with pytest.raises(ValueError, match=match):
            sk.delta_norm(*(a.to("meta") for a in args))


def test_delta_norm_meta_kernel_gives_shape_and_dtype(gen):
    x = torch.randn(3, 5, 7, generator=gen).bfloat16().to("meta")
    out = sk.delta_norm(x, torch.empty_like(x))
    assert out.device.type == "meta" and out.shape == (3,) and out.dtype == torch.float32
    with torch._subclasses.FakeTensorMode() as mode:
        fx = mode.from_tensor(torch.randn(4, 9, generator=gen))
        out = sk.delta_norm(fx, fx)
    assert out.shape == (4,) and out.dtype == torch.float32


def test_delta_norm_schema():
    assert sk.SCHEMAS["delta_norm"] == SCHEMA
    assert str(torch.ops.sencache.delta_norm.default._schema) == "sencache::" + SCHEMA


def test_delta_norm_errors_identical_in_fallback():
    assert_same_errors_as_fallback("delta_norm", [args for args, _ in bad_cases()])


def test_delta_norm_fallback_passes_opcheck_and_agrees(gen):
    x, r = torch.randn(3, 11, generator=gen), torch.randn(3, 11, generator=gen)
    got = run_without_extension(
        "torch.library.opcheck(torch.ops.sencache.delta_norm.default, inputs)\n"
        "result = (sk.delta_norm(*inputs), torch.ops.sencache.delta_norm(*(a.to('meta') for a in inputs)).shape)",
        (x, r))
    assert torch.equal(got[0], sk.delta_norm(x, r)) and got[1] == (3,)
