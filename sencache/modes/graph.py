"""Graph mode: each transformer call of a denoising step is one CUDA-graph replay, with the block stack under a
conditional IF node whose predicate a kernel sets from the device decision flag. No host sync per step.

One capture per (CFG context, input signature). A call copies its tensor inputs into the graph's static buffers
(device to device), sets one device scalar, replays, and returns a copy of the graph's output. Capturing a
signature takes three stages, all on the current device:

1. **Warm-up.** One eager forward on a side stream, with a throwaway decision state, initialises libraries and
   compiles Triton kernels. At the head block it runs the stack eagerly and then captures the **body**: the block
   stack over static copies of the head block's inputs. The body writes its outputs and ``residual = blocks_out -
   blocks_in`` into buffers that outlive every replay. It is captured with ``keep_graph=True`` in a memory pool of
   its own, so its intermediates never alias tensors that the main graph keeps alive across the IF node.
2. **Capture.** ``Executor.device_step`` runs under ``torch.cuda.graph``: the decision and the reference update
   (deciding context only), then the forward. At the head block, ``sencache::capture_if`` copies the block inputs
   into the body's buffers and adds the set-conditional kernel and an IF node that runs a copy of the body. The head
   then returns ``where(compute, blocks_out, blocks_in + residual)``, a select on the device. On a computed step
   this is exactly ``blocks_out``, so at ``eps=0`` the output equals an uncached graph replay bit for bit.
3. **Replay** at every call.

The predicate is ``flag | COMPUTE`` while the context's residual is not yet valid in the current pipeline call (its
first call, or a fresh capture), else the flag. The host tells the graph which case applies by filling one device
boolean before the replay, which is no sync.

Blocks compiled by region (``compile_repeated_blocks``) run their compiled code in the warm-up and in the body, so the
IF node holds inductor's fused kernels. Inductor's own CUDA graphs cannot run inside a capture: they are off while
graph mode warms up and captures, and blocks compiled with them (``mode="reduce-overhead"``) make graph mode
unavailable, with the reason.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from sencache.modes import Context, Executor, Unavailable
from sencache.modes.compiled import clone_tensors
from sencache.parallel import graph_reason
from sencache.stack import BlockStack, Carried, Residual
from sencache_kernels import COMPUTE, DecisionState, has_conditional_nodes

MAX_GRAPHS = 8  # captured signatures kept per context; the oldest is dropped (and its memory freed) beyond


def unavailable_reason(x: torch.Tensor) -> str | None:
    """Why graph mode cannot run for latent ``x`` on this machine, or None when it may (the driver and the body's
    node types are checked when capturing)."""
    if x.device.type != "cuda":
        return f"the latent is on {x.device}, and CUDA graphs need a CUDA device"
    if not has_conditional_nodes():
        return ("the sencache extension was built without CUDA; rebuild it with "
                "`pip install --no-build-isolation -e .` where nvcc and a CUDA build of torch are available")
    cuda = tuple(int(v) for v in (torch.version.cuda or "0.0").split(".")[:2])
    if cuda < (12, 4):
        return f"torch uses CUDA {torch.version.cuda}; conditional graph nodes need CUDA 12.4 or newer"
    return None


class GraphExecutor(Executor):
    name = "graph"

    def __call__(self, ctx: Context, step: Any, args: tuple, kwargs: dict) -> Any:
        clock = self.hook.clock
        decide_inputs = self.device_inputs(step)
        key, leaves = signature_key((decide_inputs, args, kwargs))
        cap = ctx.captures.get(key)
        if cap is None or cap.state is not clock.state or cap.generation != self.hook.stack.generation:
            cap = ctx.captures[key] = self._capture(decide_inputs, args, kwargs)
            while len(ctx.captures) > MAX_GRAPHS:
                ctx.captures.popitem(last=False)
        must_compute = not cap.body.residual.valid(clock.call)
        out = replay(cap, leaves, must_compute)
        cap.body.residual.call = clock.call
        self.record_on_device(step, must_compute)
        return out

    def _capture(self, decide_inputs: tuple | None, args: tuple, kwargs: dict) -> CapturedCall:
        state = self.hook.clock.state
        reason = unavailable_reason(state.x_ref) or graph_reason(state)
        if reason is not None:
            raise Unavailable(f"graph mode is unavailable: {reason}")
        return capture_call(self, state, decide_inputs, args, kwargs)


def _tensors(leaves: list[Any]) -> list[torch.Tensor]:
    return [v for v in leaves if isinstance(v, torch.Tensor)]


def _static_copy(leaves: list[Any]) -> list[Any]:
    return [v.clone() if isinstance(v, torch.Tensor) else v for v in leaves]


def signature_key(tree: Any) -> tuple[tuple, list[Any]]:
    """``(key, leaves)``: what a captured graph is specific to (the input structure, every tensor's shape, dtype and
    device, and every other input's value, which the capture bakes in), and the inputs flattened."""
    leaves, spec = tree_flatten(tree)
    return (spec, tuple((tuple(v.shape), v.dtype, v.device) if isinstance(v, torch.Tensor)
                        else ("value", repr(v)) for v in leaves)), leaves


@dataclass
class _Body:
    """The block stack captured on its own, composed under the IF node of each main-graph capture."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]  # static copies of the head block's tensor inputs, in flatten order
    carried: Carried  # those of them the blocks carry: (hidden,) or (hidden, encoder)
    outputs: Carried  # the stack's outputs (in the body's pool)
    residual: Residual  # blocks_out - blocks_in of the last computed step (outside every pool), and its call


@dataclass
class CapturedCall:
    """One captured transformer call: its graph, static inputs and output, and the state it was captured with."""

    graph: torch.cuda.CUDAGraph
    body: _Body
    inputs: list[torch.Tensor]
    output: Any
    must: torch.Tensor  # device bool, set before each replay: compute whatever the flag says
    state: DecisionState
    generation: int  # the block stack's compiled code it captured (BlockStack.generation)


class _Building:
    """What stands for the block stack while a call is being captured."""

    def __init__(self, stack: BlockStack, must: torch.Tensor) -> None:
        self.stack = stack
        self.must = must  # device bool: compute whatever the flag says
        self.flag: torch.Tensor | None = None  # the decision flag of the state in use
        self.body: _Body | None = None
        self.capturing = False

    def replace_stack(self, carried: Carried, args: tuple, kwargs: dict) -> Carried:
        stack = self.stack
        if not self.capturing:  # warm-up: run the stack, then capture the body on static copies of its inputs
            out = stack.run(carried, args, kwargs)
            self.body = self._capture_body(stack, args, kwargs)
            return out
        body = self.body
        for dst, src in zip(body.inputs, _tensors(tree_flatten((args, kwargs))[0]), strict=True):
            dst.copy_(src)
        # read after the step's decision, which runs before the forward (Executor.device_step)
        pred = self.flag | self.must.to(torch.int32) * COMPUTE
        _capture_if(pred, body.graph)
        compute = (pred & COMPUTE) != 0
        skipped = stack.skip(body.carried, body.residual.tensors)
        return tuple(None if o is None else torch.where(compute, o, k)
                     for o, k in zip(body.outputs, skipped, strict=True))

    @staticmethod
    def _capture_body(stack: BlockStack, args: tuple, kwargs: dict) -> _Body:
        leaves, spec = tree_flatten((args, kwargs))
        static = _static_copy(leaves)
        s_args, s_kwargs = tree_unflatten(static, spec)
        carried = stack.carried(s_args, s_kwargs)
        residual = Residual()
        residual.tensors = tuple(torch.zeros_like(c) for c in carried)

        def body() -> Carried:
            outputs = stack.run(carried, s_args, s_kwargs)
            stack.store_residual(outputs, carried, residual.tensors)
            return outputs

        graph, outputs = _capture(body, keep_graph=True)  # never instantiated: a copy runs under the IF node
        # a stream the stack ends without (SD3's encoder states) has no residual
        residual.tensors = tuple(None if o is None else r for r, o in zip(residual.tensors, outputs, strict=True))
        return _Body(graph, _tensors(static), carried, outputs, residual)


# The three CUDA steps of a capture, as functions: the CPU tests replace them with stand-ins that run the captured
# Python again at each replay, which checks everything else here without a GPU.
def _capture(fn: Any, keep_graph: bool = False) -> tuple[Any, Any]:
    """Capture ``fn()`` into a new CUDA graph with a memory pool of its own; return the graph and ``fn``'s output."""
    graph = torch.cuda.CUDAGraph(keep_graph=keep_graph)
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def _warm_up(device: torch.device, fn: Any) -> None:
    """Run ``fn()`` on a side stream, after the current stream's work and before what follows on it."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)


def _capture_if(pred: torch.Tensor, body: Any) -> None:
    """Add the set-conditional kernel and an IF node running a copy of ``body`` to the capture in progress."""
    torch.ops.sencache.capture_if(pred, body.raw_cuda_graph())


def capture_call(executor: GraphExecutor, state: DecisionState, decide_inputs: tuple | None, args: tuple,
                 kwargs: dict) -> CapturedCall:
    """Capture one transformer call: ``executor.device_step`` (the decision when ``decide_inputs`` is given, then
    the forward), with the head block building the IF node; ``state``'s flag drives it.

    Raises:
        Unavailable: an input lives off the latent's device, or capturing failed (the message says why).
    """
    leaves, spec = tree_flatten((decide_inputs, args, kwargs))
    tensors = _tensors(leaves)
    device = state.flag.device
    off = [tuple(t.shape) for t in tensors if t.device != device]
    if off:
        raise Unavailable(f"transformer inputs of shapes {off} are not on {device}; graph mode needs every "
                          "tensor input on the latent's device")
    static = _static_copy(leaves)
    s_decide, s_args, s_kwargs = tree_unflatten(static, spec)
    must = torch.ones((), dtype=torch.bool, device=device)
    building = _Building(executor.hook.stack, must)

    def body_of_step(st: DecisionState) -> Any:
        building.flag = st.flag
        with building.stack.running(building):
            return executor.device_step(s_decide, s_args, s_kwargs, st)

    def warm_up() -> None:  # on a copy of the state; captures the body
        scratch = DecisionState(torch.empty_like(state.x_ref))
        scratch.load_state_dict(state.state_dict())
        body_of_step(scratch)

    reason = compiled_blocks_reason(executor.hook.stack)
    if reason is not None:
        raise Unavailable(reason)
    try:
        with torch.no_grad(), _no_inductor_cudagraphs(executor.hook.stack):  # inference only, like a replay
            _warm_up(device, warm_up)
            building.capturing = True
            graph, output = _capture(lambda: body_of_step(state))
    except (RuntimeError, ValueError) as exc:
        raise Unavailable(f"capturing the step failed: {exc}") from exc
    return CapturedCall(graph, building.body, _tensors(static), output, must, state, executor.hook.stack.generation)


def inductor_cudagraphs(fn: Any) -> bool:
    """Whether ``fn``, made by ``torch.compile``, was compiled with inductor's CUDA graphs (``mode="reduce-overhead"``
    or ``"max-autotune"``, or ``options={"triton.cudagraphs": True}``), as far as torch's compile wrapper shows its
    backend's options; False where it does not (a capture that then fails still falls back, with its error)."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            backend = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        for _ in range(8):  # the wrappers around the backend, each pointing to the next
            config = getattr(backend, "config", None)
            if isinstance(config, dict):
                return bool(config.get("triton.cudagraphs", False))
            backend = getattr(backend, "_torchdynamo_orig_backend", None)
            if backend is None:
                break
    return False


def compiled_blocks_reason(stack: BlockStack) -> str | None:
    """Why graph mode cannot capture the stack's blocks compiled by region, or None."""
    if any(fn is not None and inductor_cudagraphs(fn) for fn in stack.compiled):
        return ("the blocks were compiled with inductor's CUDA graphs (mode='reduce-overhead' or 'max-autotune'), "
                "which cannot run inside graph mode's capture; compile them without (e.g. "
                "transformer.compile_repeated_blocks(fullgraph=True)): graph mode's own graph covers the whole step")
    return None


def _no_inductor_cudagraphs(stack: BlockStack) -> Any:
    """Inductor's CUDA graphs off while blocks compiled by region may compile (warm-up) or run (capture)."""
    if stack.calls is None:
        return contextlib.nullcontext()
    from torch._inductor import config

    return config.patch({"triton.cudagraphs": False})


def replay(cap: CapturedCall, leaves: list[Any], must_compute: bool) -> Any:
    """Feed this call's inputs to a captured call, replay it and return a copy of its output (no host sync).

    Args:
        leaves: the call's flattened inputs (from :func:`signature_key`).
        must_compute: run the block stack whatever the flag says (the context has no valid residual yet).
    """
    for dst, src in zip(cap.inputs, _tensors(leaves), strict=True):
        dst.copy_(src)
    cap.must.fill_(must_compute)
    cap.graph.replay()
    return clone_tensors(cap.output)
