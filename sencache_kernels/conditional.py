"""``sencache::set_conditional`` and ``sencache::capture_if``: CUDA-graph conditional execution from the device flag.

- ``set_conditional(flag, handle)``: sets a CUDA-graph conditional handle to 1 when ``flag`` has the ``COMPUTE`` bit,
  else 0 (a one-thread kernel, captured before an IF node).
- ``capture_if(flag, body_graph) -> handle``: during a capture, adds the set-conditional kernel and an IF node
  running a copy of ``body_graph`` to the graph being captured; ``has_conditional_nodes()`` says whether this build
  has it.

Both build CUDA graphs, so they have no pure-torch reference: the CUDA kernels are in ``csrc/sencache/conditional.cu``
(CUDA builds of the extension); ``csrc/sencache/conditional.cpp`` holds the CPU kernels (which check the arguments and
say why a CPU flag cannot work) and the Meta kernels. Without the extension, the fallback kernels below check the
arguments and raise, saying what to build. The fakes check the arguments; ``capture_if``'s returns 0 (no handle
exists at trace time), like its Meta kernel.
"""

from __future__ import annotations

import torch

from sencache_kernels import ops

_NEEDS_CUDA_BUILD = ("needs the compiled extension built with CUDA (pip install --no-build-isolation -e . on a "
                     "machine with nvcc and a CUDA torch)")


def has_conditional_nodes() -> bool:
    """Whether ``capture_if`` has a CUDA kernel here (the extension was built with CUDA)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("sencache::capture_if", "CUDA")
    except RuntimeError:  # an extension built before the op existed
        return False


def _set_conditional_fallback(flag: torch.Tensor, handle: int) -> None:
    raise RuntimeError(f"sencache::set_conditional {_NEEDS_CUDA_BUILD}")


def _set_conditional_fake(flag: torch.Tensor, handle: int) -> None:
    return None


def _capture_if_fallback(flag: torch.Tensor, body_graph: int) -> int:
    raise RuntimeError(f"sencache::capture_if {_NEEDS_CUDA_BUILD}")


def _capture_if_fake(flag: torch.Tensor, body_graph: int) -> int:
    return 0


check_set_conditional_args = ops.CHECKS["set_conditional"]
check_capture_if_args = ops.CHECKS["capture_if"]
ops.register("set_conditional", _set_conditional_fallback, _set_conditional_fake)
ops.register("capture_if", _capture_if_fallback, _capture_if_fake)
