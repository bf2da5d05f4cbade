import pytest
import torch

import sencache_kernels as sk

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
