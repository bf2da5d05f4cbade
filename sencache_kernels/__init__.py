"""``sencache_kernels``: the low-level SenCache ops for integrators.

- ``delta_norm(x, x_ref)``: per-sample ``||x - x_ref||_2`` accumulated in float32.
- ``decide(...)``: the sensitivity score, the skip decision and the state update, in place, with no host sync
  (on CUDA one fused Triton launch, ``decide_triton``).
- ``commit(flag, src, base, dst)``: the compute branch's state write (``dst <- src - base``), predicated on the
  device flag: the latent reference and the block-stack residual.
- ``set_conditional(flag, handle)`` (``torch.ops.sencache.set_conditional``, CUDA builds): sets a CUDA-graph
  conditional handle from the flag.
- ``capture_if(flag, body_graph)`` (``torch.ops.sencache.capture_if``, CUDA builds, during a capture): adds the
  set-conditional kernel and an IF node running a copy of ``body_graph`` to the graph being captured;
  ``has_conditional_nodes()`` says whether this build has it.
- ``DecisionState``: the device-resident state those ops update, in registered buffers.
- ``build_info()``: what this installation can run (the extension, its CUDA ops and conditional nodes, Triton).

One stem per op in every layer: ``sencache_kernels/<op>.py`` (reference ``*_ref``, wrapper, fallback kernel and
fake), ``csrc/sencache/<op>.*`` (C++ CPU/Meta and CUDA kernels), ``tests/test_<op>.py``, ``benchmarks/bench_<op>.py``;
``set_conditional`` and ``capture_if`` share the stem ``conditional``. Schemas, argument rules and error messages are
written once, in ``ops.def``; ``ops.py`` registers the ops. Each op except the graph ones has a pure-torch reference
(``*_ref``), which is also the CPU path and the test oracle. Importing this package never initialises CUDA.
"""

from sencache_kernels.commit import commit, commit_ref
from sencache_kernels.conditional import has_conditional_nodes
from sencache_kernels.decide import COMPUTE, NONFINITE, decide, decide_ref, decide_triton
from sencache_kernels.delta_norm import delta_norm, delta_norm_ref
from sencache_kernels.installation import BuildInfo, build_info, warn_if_mismatched
from sencache_kernels.ops import HAS_EXTENSION, SCHEMAS
from sencache_kernels.state import DecisionState

__all__ = [
    "COMPUTE",
    "NONFINITE",
    "HAS_EXTENSION",
    "SCHEMAS",
    "BuildInfo",
    "DecisionState",
    "build_info",
    "commit",
    "commit_ref",
    "decide",
    "decide_ref",
    "decide_triton",
    "delta_norm",
    "delta_norm_ref",
    "has_conditional_nodes",
]

warn_if_mismatched()  # once, at import: an extension compiled against another torch
