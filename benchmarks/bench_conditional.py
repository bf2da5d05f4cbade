"""Microbenchmark of ``sencache::capture_if``: replaying a CUDA graph whose body sits under the conditional IF node,
against replaying the same body captured without it.

``pytest benchmarks/bench_conditional.py --benchmark-only``; needs a CUDA build of the extension (skips otherwise).
The body stands in for a block stack: ``KERNELS`` elementwise kernels over a Wan-480p-sized bf16 tensor. With the flag
set to compute, the IF graph should cost the body plus the set-conditional kernel and the node; with the flag clear, a
few microseconds whatever the body: what a skipped step costs in graph mode.
"""

import pytest
import torch

import sencache_kernels as sk

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and sk.has_conditional_nodes()),
                                reason="needs a CUDA GPU and the extension built with CUDA 12.4+")
KERNELS = 16
ELEMENTS = 16 * 21 * 60 * 104  # the Wan 480p latent


def _capture(fn, keep_graph=False):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph(keep_graph=keep_graph)
    with torch.cuda.graph(graph):
        fn()
    return graph


@pytest.fixture(scope="module")
def graphs():
    x = torch.randn(ELEMENTS, device="cuda").bfloat16()
    flag = torch.zeros((), dtype=torch.int32, device="cuda")

    def body():
        for _ in range(KERNELS):
            x.mul_(0.5).add_(0.5)

    plain = _capture(body)
    inner = _capture(body, keep_graph=True)
    conditional = torch.cuda.CUDAGraph()
    with torch.cuda.graph(conditional):
        torch.ops.sencache.capture_if(flag, inner.raw_cuda_graph())
    return {"plain": plain, "if": conditional, "flag": flag, "keep": inner}


@pytest.mark.parametrize("variant", ["plain", "if_compute", "if_skip"])
def test_graph_replay(benchmark, graphs, variant):
    graph = graphs["plain" if variant == "plain" else "if"]
    graphs["flag"].fill_(sk.COMPUTE if variant != "if_skip" else 0)

    def replay():
        graph.replay()
        torch.cuda.synchronize()

    replay()
    benchmark.extra_info.update(kernels_in_body=KERNELS, elements=ELEMENTS, device=torch.cuda.get_device_name())
    benchmark(replay)
