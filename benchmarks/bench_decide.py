"""Microbenchmark of one decision step: the fused op against the eager-torch composition caching libraries use.

``pytest benchmarks --benchmark-only`` (``make bench``). On a GPU every round launches and then synchronises, so the
timed wall clock covers the device work; each benchmark also records CUDA-event medians
(``triton.testing.do_bench``) in ``extra_info``: ``device_us``, bytes moved, and the achieved fraction of the
device-to-device copy bandwidth measured in the same session. Save a run with
``--benchmark-json benchmarks/results/<file>.json``.

Targets (issue "fused decision kernel"; benchmarks, not tests): the fused decision at least 5x faster than the eager
composition at the Wan 480p and 720p latent sizes; at least 85% of the measured copy bandwidth at 128M elements; one
launch. Without CUDA this runs in a CPU smoke mode (the C++ CPU op, tiny sizes): CPU numbers say nothing about the
GPU targets and are not committed.
"""

import pytest
import torch

import sencache_kernels as sk

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = (
    {"smoke": (1, 16, 3, 32, 32)}
    if DEVICE == "cpu"
    else {
        "wan480p": (1, 16, 21, 60, 104),  # 2.1M elements
        "wan720p": (1, 16, 21, 90, 160),  # 4.8M elements
        "128M": (1, 128 * 2**20),
    }
)
DTYPES = [torch.float32, torch.bfloat16]


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _inputs(shape, dtype):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(shape, generator=g, device=DEVICE).to(dtype)
    b = shape[0]
    j = torch.rand(b, generator=g, device=DEVICE) + 0.5
    return x, torch.full((b,), 500.0, device=DEVICE), j, j * 1e-3


_COPY_GBPS: dict[int, float] = {}


def _copy_bandwidth(nbytes: int) -> float:
    """Device-to-device copy bandwidth (GB/s, read + write) at this size in this session, from CUDA-graph replays
    like the decision's ``graph_us`` (an event-timed single copy of a few MB times its launch)."""
    if nbytes not in _COPY_GBPS:
        src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        _COPY_GBPS[nbytes] = 2 * nbytes / (_graph_us(lambda: dst.copy_(src)) * 1e-6) / 1e9
    return _COPY_GBPS[nbytes]


GRAPH_REPEATS = 20  # launches per captured graph: one replay of a few microseconds would time the host instead


def _graph_us(fn) -> float:
    """Device time of one ``fn()`` (microseconds) from replays of a CUDA graph holding ``GRAPH_REPEATS`` calls: no
    launch gaps, which is how compiled and graph modes run the decision."""
    import triton.testing

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_REPEATS):
            fn()
    return triton.testing.do_bench(graph.replay, warmup=50, rep=500) * 1e3 / GRAPH_REPEATS


def _device_info(benchmark, fn, nbytes: int, graph_fn=None) -> None:
    """``device_us``: CUDA-event median of eager launches (host launch cost included when it exceeds the kernel);
    ``graph_us``: the same work replayed from a CUDA graph (``graph_fn``, default ``fn``); bandwidth from the
    latter."""
    if DEVICE != "cuda":
        return
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=50, rep=500)
    graph_us = _graph_us(graph_fn or fn)
    gbps = nbytes / (graph_us * 1e-6) / 1e9
    copy = _copy_bandwidth(nbytes // 2)  # the copy reads and writes half of what the decision reads
    benchmark.extra_info.update(device_us=ms * 1e3, graph_us=graph_us, bytes=nbytes, gbps=gbps, copy_gbps=copy,
                                fraction_of_copy=gbps / copy, device=torch.cuda.get_device_name(),
                                torch=torch.__version__)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(SHAPES))
def test_fused_decision(benchmark, name, dtype):
    """``sencache::decide``: one launch reading x and x_ref once (the Triton kernel on CUDA)."""
    x, t, jx, jt = _inputs(SHAPES[name], dtype)
    state = sk.DecisionState(x)
    state.x_ref.copy_(x)
    state.set_inputs(0.05, False)

    def step():
        sk.decide(x, t, jx, jt, state.eps, state.force, state.x_ref, state.t_ref, state.jx_ref, state.jt_ref,
                  state.skips, state.flag, state.score, state.ticket, 3)

    step()
    _device_info(benchmark, step, 2 * x.numel() * x.element_size())
    benchmark(lambda: (step(), _sync()))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(SHAPES))
def test_eager_composition(benchmark, name, dtype):
    """What caching libraries do today: sub, norm, scale, add, compare, then ``.item()`` (sample 0 decides)."""
    x, t, jx, jt = _inputs(SHAPES[name], dtype)
    x_ref = x.clone()
    thr = 0.05 * x[0].numel() ** 0.5

    def kernels():
        d = (x.float() - x_ref.float()).norm()
        score = jx[0] * d + jt[0] * (t[0] - 400.0).abs()
        return score <= thr

    def step():
        return bool(kernels().item())

    step()
    # graph_us: its kernels alone (a graph cannot hold the .item()), the best case of this composition
    _device_info(benchmark, step, 2 * x.numel() * x.element_size(), graph_fn=kernels)
    benchmark(step)
