"""sencache::decide's fused Triton kernel (sk.decide_triton): drift norms against float64 over dtypes, sizes, block
and chunk splits and non-contiguous inputs, whole trajectories against the reference policy, non-finite and forced
steps, determinism over launches, and on CUDA the op's dispatch to it, CUDA graph replays and its single launch.

On a GPU these run natively; without one, through the Triton interpreter on the CPU (small sizes)."""

import math

import pytest
import torch

import sencache_kernels as sk
from tests.helpers import DECIDE_STATE, DEVICE, clone_args, make_args, requires_cuda

# Drift norms in float32 against float64: at most ~100 sequential float32 additions per element path (loop over
# blocks, block tree, chunk partials), so a relative error well under 100 * 2**-24 = 6e-6 of the sum of squares.
NORM_RTOL = 1e-5


def to_device(args):
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def norm_args(x, x_ref):
    """Arguments whose score is exactly the drift norm (jx_ref = 1, jt_ref = 0, t = t_ref)."""
    b = x.shape[0]
    a = make_args(x.cpu(), torch.Generator().manual_seed(0))
    a.update(x=x, x_ref=x_ref, jx_ref=torch.ones(b), jt_ref=torch.zeros(b), t=torch.full((b,), 7.0),
             t_ref=torch.full((b,), 7.0))
    return to_device(a)


def norm64(x, x_ref):
    return torch.linalg.vector_norm((x.double() - x_ref.double()).reshape(x.shape[0], -1), dim=1).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("per_sample", [1, 7, 1023, 4097])
def test_triton_norm_against_float64(dtype, batch, per_sample, gen):
    x = torch.randn(batch, per_sample, generator=gen).to(dtype).to(DEVICE)
    x_ref = torch.randn(batch, per_sample, generator=gen).to(dtype).to(DEVICE)
    a = norm_args(x, x_ref)
    sk.decide_triton(**a, block=256, max_chunks=3)  # several programs per sample: the ticketed reduction
    torch.testing.assert_close(a["score"].cpu(), norm64(x, x_ref).cpu(), rtol=NORM_RTOL, atol=0)
    assert int(a["ticket"]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 2])
def test_triton_norm_one_million_per_sample(dtype, batch, gen):
    n = 1 << 20
    x = torch.randn(batch, n, generator=gen).to(dtype).to(DEVICE)
    x_ref = (x.float().cpu() + 0.01 * torch.randn(batch, n, generator=gen)).to(dtype).to(DEVICE)
    a = norm_args(x, x_ref)
    sk.decide_triton(**a)
    torch.testing.assert_close(a["score"].cpu(), norm64(x, x_ref).cpu(), rtol=NORM_RTOL, atol=0)


@pytest.mark.parametrize("drift", [2e19, -3.0e38, 1e-30, 1e-44, 0.0])
def test_triton_one_element_per_sample_equals_reference(drift, gen):
    """A sample of one element: the drift norm is |x - x_ref| in the reference (torch's norm of one element squares
    nothing), so it neither overflows above ~1.8e19 nor underflows below ~1e-19; the kernel gives the same bits and
    flags (issue 15: it gave inf and NONFINITE at 2e19). Float64 agrees exactly (|a - b| is exact for these values)."""
    x = torch.tensor([[drift], [0.5]])
    x_ref = torch.tensor([[0.0], [0.25]])
    a = norm_args(x.to(DEVICE), x_ref.to(DEVICE))
    a["eps"] = torch.tensor(0.0, device=DEVICE)  # a zero tolerance: any nonzero drift computes, a zero one may skip
    ref = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in clone_args(a).items()}
    sk.decide_ref(**ref)
    sk.decide_triton(**a)
    assert torch.equal(ref["score"], norm64(x, x_ref)) and torch.equal(a["score"].cpu(), ref["score"])
    assert int(a["flag"]) == int(ref["flag"]) == sk.COMPUTE  # sample 1 drifts: computed, and no NONFINITE bit


def test_triton_overflowing_sum_of_squares_flags_like_reference(gen):
    """Two or more elements: both sum the float32 squares unscaled, so a drift whose squares pass float32's range is
    inf in both (flagged NONFINITE, computed), while float64 would be finite: the reference is the contract."""
    x = torch.tensor([[2e19, 2e19], [1.0, 2.0]])
    x_ref = torch.zeros(2, 2)
    a = norm_args(x.to(DEVICE), x_ref.to(DEVICE))
    ref = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in clone_args(a).items()}
    sk.decide_ref(**ref)
    sk.decide_triton(**a)
    assert math.isinf(float(ref["score"][0])) and math.isfinite(float(norm64(x, x_ref).double()[0]))
    assert torch.equal(a["score"].cpu(), ref["score"])
    assert int(a["flag"]) == int(ref["flag"]) == sk.COMPUTE | sk.NONFINITE


@pytest.mark.parametrize("arg", ["eps", "force", "skips", "flag", "ticket"])
def test_triton_one_element_arguments_of_any_shape(arg, gen):
    """The kernel reads and writes the one element of eps/force/skips/flag/ticket whatever their shape, like the
    reference: a zero drift is skipped, its counter incremented, in a [1, 1] tensor."""
    x = torch.randn(2, 33, generator=gen)
    a = make_args(x, gen, eps=0.1, max_skips=3)
    a.update(x_ref=x.clone(), t_ref=a["t"].clone(), skips=torch.tensor(1, dtype=torch.int32))
    a[arg] = a[arg].reshape(1, 1).clone()
    ref = clone_args(a)
    sk.decide_ref(**ref)
    tri = to_device(a)
    sk.decide_triton(**tri)
    for k in DECIDE_STATE:
        assert tri[k].shape == ref[k].shape and torch.equal(tri[k].cpu(), ref[k]), k
    assert int(ref["flag"]) == 0 and int(ref["skips"].reshape(())) == 2


@pytest.mark.parametrize("layout", ["batch_strided", "permuted", "ref_strided"])
def test_triton_non_contiguous_inputs(layout, gen):
    base = torch.randn(4, 3, 5, 33, generator=gen).to(DEVICE)
    ref = torch.randn(4, 3, 5, 33, generator=gen).to(DEVICE)
    if layout == "batch_strided":  # a view: strided batch, contiguous samples
        x, x_ref = base[::2], ref[:2].contiguous()
    elif layout == "permuted":  # not viewable as [B, n]: the launcher copies
        x, x_ref = base.permute(0, 3, 1, 2)[:2], ref.permute(0, 3, 1, 2)[:2].contiguous()
    else:
        x, x_ref = base[:2].contiguous(), ref.transpose(2, 3)[:2].contiguous().transpose(2, 3)
    assert not (x.is_contiguous() and x_ref.is_contiguous())
    a = norm_args(x, x_ref)
    sk.decide_triton(**a, block=128, max_chunks=4)
    torch.testing.assert_close(a["score"].cpu(), norm64(x, x_ref).cpu(), rtol=NORM_RTOL, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch, per_sample", [(1, 7), (3, 1023), (4, 4097)])
def test_triton_trajectory_equals_reference_policy(dtype, batch, per_sample, gen):
    """A whole synthetic trajectory: the fused kernel takes exactly the reference's decisions and state updates.

    Scores stay far from the threshold (checked), so float32 summation order cannot flip a decision."""
    x = torch.randn(batch, per_sample, generator=gen).to(dtype)
    ref = make_args(x, gen, eps=0.02, force=True, max_skips=2)
    tri = to_device(clone_args(ref))
    n = per_sample
    decisions = []
    t = 1000.0
    for step in range(14):
        t -= 37.5
        step_scale = 0.2 if step % 4 == 0 else 1e-4  # a jump every 4 steps, tiny moves in between
        x = (x.float() + step_scale * torch.randn(x.shape, generator=gen)).to(dtype)
        tt = torch.full((batch,), t)
        jx = torch.rand(batch, generator=gen) + 0.5
        jt = torch.rand(batch, generator=gen) * 1e-6
        force = torch.tensor(step == 0)
        ref.update(x=x, t=tt, jx_now=jx, jt_now=jt, force=force)
        tri.update(to_device(dict(x=x, t=tt, jx_now=jx, jt_now=jt, force=force)))
        sk.decide_ref(**ref)
        sk.decide_triton(**tri, block=256, max_chunks=4)
        thr = 0.02 * math.sqrt(n)
        margin = (ref["score"] - thr).abs().min().item()
        assert step == 0 or margin > 1e-3 * thr, f"step {step}: a score within 0.1% of the threshold"
        for k in ("flag", "skips", "t_ref", "jx_ref", "jt_ref", "ticket"):
            assert torch.equal(tri[k].cpu(), ref[k]), (step, k)
        torch.testing.assert_close(tri["score"].cpu(), ref["score"], rtol=NORM_RTOL, atol=1e-6)
        sk.commit_ref(ref["flag"], x, None, ref["x_ref"])
        sk.commit(tri["flag"], tri["x"], None, tri["x_ref"])
        assert torch.equal(tri["x_ref"].cpu(), ref["x_ref"])
        decisions.append(int(ref["flag"]) & sk.COMPUTE)
    assert 0 in decisions and 1 in decisions[1:], decisions  # the trajectory exercises both outcomes


def test_triton_nonfinite_and_forced(gen):
    x = torch.randn(2, 100, generator=gen)
    a = to_device(make_args(x, gen, eps=1e9))
    a["x"] = a["x"].clone()
    a["x"][1, 3] = float("nan")
    sk.decide_triton(**a)
    assert int(a["flag"]) == sk.COMPUTE | sk.NONFINITE and int(a["skips"]) == 0
    b = to_device(make_args(x, gen, eps=1e9))
    sk.decide_triton(**b)
    assert int(b["flag"]) == 0 and int(b["skips"]) == 1  # huge tolerance: skip
    b["force"] = torch.tensor(True, device=DEVICE)
    sk.decide_triton(**b)
    assert int(b["flag"]) == sk.COMPUTE and int(b["skips"]) == 0


def test_triton_deterministic_over_100_launches(gen):
    """Identical inputs give identical bits on every launch, whatever order the programs arrive in."""
    # Natively: a Wan-480p-sized latent and the default launch (hundreds of programs racing for the ticket).
    x = torch.randn(2, 1 << 21, generator=gen) if DEVICE == "cuda" else torch.randn(2, 4097, generator=gen)
    launch = {} if DEVICE == "cuda" else dict(block=1024, max_chunks=5)
    first = None
    for _ in range(100):
        a = to_device(make_args(x, torch.Generator().manual_seed(5), eps=0.05))
        sk.decide_triton(**a, **launch)
        got = tuple(a[k].cpu() for k in ("score", "flag", "skips", "t_ref", "jx_ref", "jt_ref", "ticket"))
        if first is None:
            first = got
        assert all(torch.equal(u, v) for u, v in zip(got, first, strict=True))


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decide_cuda_dispatches_to_triton_and_passes_opcheck(dtype, gen):
    a = to_device(make_args(torch.randn(2, 5000, generator=gen).to(dtype), gen))
    torch.library.opcheck(torch.ops.sencache.decide.default, tuple(a.values()))
    b = clone_args(a)
    sk.decide(**a)
    sk.decide_triton(**b)
    for k in DECIDE_STATE:
        assert torch.equal(a[k], b[k]), k


@requires_cuda
def test_cuda_graph_replays_are_safe(gen):
    """The counter is reset inside the kernel, so replaying a captured decision gives the eager results."""
    x = torch.randn(2, 70000, generator=gen).cuda()
    st = sk.DecisionState(x)
    st.set_inputs(0.05, False)
    t = torch.full((2,), 500.0, device="cuda")
    j = torch.ones(2, device="cuda")
    st.step(x, t, j, j, 3)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        st.step(x, t, j, j, 3)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        st.step(x, t, j, j, 3)
    eager = sk.DecisionState(x)
    eager.load_state_dict(st.state_dict())
    for _ in range(6):  # skips accumulate up to K=3, then a computed step: both outcomes replayed
        g.replay()
        eager.step(x, t, j, j, 3)
        for name, buf in st.named_buffers():
            assert torch.equal(buf, eager.get_buffer(name)), name
    assert int(st.ticket) == 0


@requires_cuda
def test_decide_is_one_kernel_launch(gen):
    """The fused decision is a single kernel on the device (no memset, no reduction kernels, no copies)."""
    x = torch.randn(2, 1 << 20, generator=gen).cuda().bfloat16()
    st = sk.DecisionState(x)
    st.set_inputs(0.05, False)
    t = torch.full((2,), 500.0, device="cuda")
    j = torch.ones(2, device="cuda")
    args = (x, t, j, j, st.eps, st.force, st.x_ref, st.t_ref, st.jx_ref, st.jt_ref, st.skips, st.flag, st.score,
            st.ticket, 3)
    sk.decide(*args)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        sk.decide(*args)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]
