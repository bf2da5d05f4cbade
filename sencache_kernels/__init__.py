"""``sencache_kernels``: the low-level SenCache ops for integrators.

- ``delta_norm(x, x_ref)``: per-sample ``||x - x_ref||_2`` accumulated in float32.
- ``decide(...)``: the sensitivity score, the skip decision and the state update, in place, with no host sync.
- ``DecisionState``: the device-resident state those ops update, in registered buffers.

Each op has a pure-torch reference (``*_ref``), which is also the CPU path and the test oracle. Importing this
package never initialises CUDA.
"""

from sencache_kernels.decide import COMPUTE, NONFINITE, decide_ref
from sencache_kernels.delta_norm import delta_norm_ref
from sencache_kernels.ops import HAS_EXTENSION, SCHEMAS, decide, delta_norm
from sencache_kernels.state import DecisionState

__all__ = [
    "COMPUTE",
    "NONFINITE",
    "HAS_EXTENSION",
    "SCHEMAS",
    "DecisionState",
    "decide",
    "decide_ref",
    "delta_norm",
    "delta_norm_ref",
]
