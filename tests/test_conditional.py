"""sencache::set_conditional and sencache::capture_if (stem ``conditional``): their checks (the same in C++ and in the
Python fallback), what they say off CUDA, their Meta kernels and fakes. Their CUDA behaviour inside captured graphs
(the IF node running the body only on computed steps) is tested at the end of this file and, inside SenCache's graph
mode, by tests/test_graph.py; benchmarks/bench_conditional.py times it (all on a GPU)."""

import pytest
import torch

import sencache_kernels as sk
from sencache_kernels import COMPUTE
from tests.helpers import assert_same_errors_as_fallback, run_without_extension

requires_conditional_nodes = pytest.mark.skipif(not (torch.cuda.is_available() and sk.has_conditional_nodes()),
                                                reason="needs a CUDA GPU and the extension built with CUDA")

SCHEMAS = {
    "set_conditional": "set_conditional(Tensor flag, int handle) -> ()",
    "capture_if": "capture_if(Tensor flag, int body_graph) -> int",
}


def flag(device="cpu"):
    return torch.ones((), dtype=torch.int32, device=device)


def bad_cases():
    """(op, args, message) for each rule of the two ops in ops.def."""
    cases = []
    for op, arg, hint in (("set_conditional", "handle", "cudaGraphConditionalHandleCreate"),
                          ("capture_if", "body_graph", r"raw_cuda_graph\(\)")):
        cases += [
            (op, (torch.ones(2, dtype=torch.int32), 1),
             r"flag must be a one-element torch.int32 tensor, got torch.int32 of shape \[2\]; pass the flag written"),
            (op, (torch.ones((), dtype=torch.int64), 1),
             "flag must be a one-element torch.int32 tensor, got torch.int64"),
            (op, (torch.ones((), dtype=torch.float32), 1), "flag must be a one-element torch.int32"),
            (op, (flag(), 0), f"{arg} is 0; pass .*{hint}"),
        ]
    return cases


@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_conditional_bad_arguments(case):
    op, args, match = bad_cases()[case]
    fn = getattr(torch.ops.sencache, op)
    with pytest.raises(ValueError, match=match):
        fn(*args)
    with pytest.raises(ValueError, match=match):  # the Meta kernel (the fake) checks the same way
        fn(args[0].to("meta"), args[1])


@pytest.mark.skipif(not sk.HAS_EXTENSION, reason="the CPU kernels are the extension's")
@pytest.mark.parametrize("op", list(SCHEMAS))
def test_conditional_on_cpu_says_what_to_do(op):
    with pytest.raises(ValueError, match=f"sencache::{op}: flag is on the CPU.*CUDA graph"):
        getattr(torch.ops.sencache, op)(flag(), 12345)


def test_conditional_errors_identical_in_fallback():
    for op in SCHEMAS:
        assert_same_errors_as_fallback(op, [args for name, args, _ in bad_cases() if name == op])


@pytest.mark.parametrize("op", list(SCHEMAS))
def test_conditional_schema(op):
    assert sk.SCHEMAS[op] == SCHEMAS[op]
    assert str(getattr(torch.ops.sencache, op).default._schema) == "sencache::" + SCHEMAS[op]


def test_conditional_meta_kernels_and_fakes():
    assert torch.ops.sencache.set_conditional(flag("meta"), 7) is None
    assert torch.ops.sencache.capture_if(flag("meta"), 7) == 0  # no handle exists at trace time
    with torch._subclasses.FakeTensorMode() as mode:
        f = mode.from_tensor(flag())
        assert torch.ops.sencache.set_conditional(f, 7) is None
        assert torch.ops.sencache.capture_if(f, 7) == 0
        with pytest.raises(ValueError, match="body_graph is 0"):
            torch.ops.sencache.capture_if(f, 0)


def test_conditional_fallback_raises_and_fakes():
    got = run_without_extension(
        "result = [helpers.error_of(op, (torch.ones((), dtype=torch.int32), 5)) for op in inputs]\n"
        "result += [torch.ops.sencache.capture_if(torch.ones((), dtype=torch.int32, device='meta'), 5),\n"
        "           torch.ops.sencache.set_conditional(torch.ones((), dtype=torch.int32, device='meta'), 5)]\n"
        "result.append(sk.has_conditional_nodes())",
        list(SCHEMAS))
    for op, message in zip(SCHEMAS, got[:2], strict=True):
        assert message.startswith(f"RuntimeError: sencache::{op} needs the compiled extension built with CUDA"), message
    assert got[2:] == [0, None, False]


def test_has_conditional_nodes_follows_the_cuda_build():
    cuda_build = torch._C._dispatch_has_kernel_for_dispatch_key("sencache::commit", "CUDA")
    assert sk.has_conditional_nodes() == cuda_build
    if torch.version.cuda is None:
        assert not sk.has_conditional_nodes()


@pytest.mark.parametrize("op", list(SCHEMAS))
def test_conditional_opcheck_on_meta(op):
    """Off CUDA the kernels only raise, so opcheck runs the schema, fake and dispatch checks on a meta flag."""
    torch.library.opcheck(getattr(torch.ops.sencache, op).default, (flag("meta"), 5))


# ----------------------------------------------------------------------------------------------------- GPU ---------


def _capture_body(fn):
    body = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.graph(body):
        fn()
    return body


@requires_conditional_nodes
def test_capture_if_runs_the_body_only_when_the_flag_says_compute():
    acc = torch.zeros(1000, device="cuda")
    flag = torch.zeros((), dtype=torch.int32, device="cuda")
    body = _capture_body(lambda: acc.add_(1.0))
    main = torch.cuda.CUDAGraph()
    with torch.cuda.graph(main):
        handle = torch.ops.sencache.capture_if(flag, body.raw_cuda_graph())
        acc.mul_(2.0)  # after the IF node: runs every replay, ordered after the body
    assert handle != 0
    expected = torch.zeros(1000, dtype=torch.float64, device="cuda")
    for value in (COMPUTE, 0, 0, COMPUTE, COMPUTE, 0, COMPUTE):
        flag.fill_(value)
        main.replay()
        expected = (expected + (1.0 if value else 0.0)) * 2.0
    torch.cuda.synchronize()
    assert torch.equal(acc.double(), expected)


@requires_conditional_nodes
def test_capture_if_rejects_a_body_with_event_nodes():
    x = torch.zeros(8, device="cuda")

    def body_fn():
        x.add_(1.0)
        torch.cuda.Event(external=True).record()  # an event-record node: not allowed in a conditional body

    body = _capture_body(body_fn)
    flag = torch.ones((), dtype=torch.int32, device="cuda")
    with pytest.raises(RuntimeError, match="event record node"), torch.cuda.graph(torch.cuda.CUDAGraph()):
        torch.ops.sencache.capture_if(flag, body.raw_cuda_graph())


@requires_conditional_nodes
def test_capture_if_outside_a_capture_says_what_to_do():
    x = torch.zeros(8, device="cuda")
    body = _capture_body(lambda: x.add_(1.0))
    with pytest.raises(RuntimeError, match="not being captured.*torch.cuda.graph"):
        torch.ops.sencache.capture_if(flag("cuda"), body.raw_cuda_graph())
