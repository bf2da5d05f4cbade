"""The one place where the ``sencache::`` ops are registered with ``torch.library``.

The compiled extension (``sencache_kernels._C``) defines the schemas with ``TORCH_LIBRARY(sencache, ...)`` and
provides CPU and Meta kernels (and CUDA kernels for ``commit`` and ``set_conditional`` when built with CUDA).
Without it (no compiler, or ``SENCACHE_DISABLE_EXTENSION=1``), the same schemas are defined here with the pure-torch
references as kernels and fake implementations for tracing, after one warning. Either way the ops are
``torch.ops.sencache.{delta_norm,decide,commit,set_conditional,capture_if}``. The last two build CUDA graphs
(``csrc/sencache/conditional.cu``) and exist on CUDA builds only; elsewhere they raise, saying why.

``decide`` on CUDA is the fused Triton kernel (``decide_triton``), registered here for the CUDA dispatch key; without
Triton it falls back to the reference (still no host sync, but several launches).
"""

from __future__ import annotations

import os
import warnings

import torch

from sencache_kernels.commit import commit_ref
from sencache_kernels.decide import decide_ref, decide_triton, triton
from sencache_kernels.delta_norm import delta_norm_ref

# Must stay identical to the schemas in csrc/sencache/ops.cpp (tests/test_ops.py compares them).
SCHEMAS = {
    "delta_norm": "delta_norm(Tensor x, Tensor x_ref) -> Tensor",
    "decide": (
        "decide(Tensor x, Tensor t, Tensor jx_now, Tensor jt_now, Tensor eps, Tensor force, Tensor x_ref, "
        "Tensor(a!) t_ref, Tensor(b!) jx_ref, Tensor(c!) jt_ref, Tensor(d!) skips, Tensor(e!) flag, "
        "Tensor(f!) score, Tensor(g!) ticket, int max_skips) -> ()"
    ),
    "commit": "commit(Tensor flag, Tensor src, Tensor? base, Tensor(a!) dst) -> ()",
    "set_conditional": "set_conditional(Tensor flag, int handle) -> ()",
    "capture_if": "capture_if(Tensor flag, int body_graph) -> int",
}

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _load_extension() -> bool:
    if os.environ.get("SENCACHE_DISABLE_EXTENSION", "0") == "1":
        return False
    try:
        import sencache_kernels._C  # noqa: F401  (loading it registers TORCH_LIBRARY(sencache))
    except ImportError as exc:
        warnings.warn(
            f"sencache_kernels: the compiled extension is not available ({exc}); using the pure-torch reference "
            "ops. Build it with `pip install --no-build-isolation -e .` in the repository.",
            stacklevel=2,
        )
        return False
    return True


HAS_EXTENSION = _load_extension()


def check_delta_norm_args(x: torch.Tensor, x_ref: torch.Tensor) -> None:
    """Raise ValueError when ``x`` and ``x_ref`` cannot be compared (same checks as the C++ op)."""
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"sencache: x must have a batch dimension of size >= 1, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"sencache: x must be a floating-point latent (float32/16, bfloat16, float64), got {x.dtype}")
    if x_ref.shape != x.shape or x_ref.dtype != x.dtype or x_ref.device != x.device:
        raise ValueError(
            f"sencache: x_ref must match x in shape, dtype and device; got x {tuple(x.shape)} {x.dtype} {x.device} "
            f"and x_ref {tuple(x_ref.shape)} {x_ref.dtype} {x_ref.device}. Reset the state when the latent changes."
        )


def check_decide_args(x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score, ticket,
                      max_skips):
    """Raise ValueError for arguments of ``decide`` that do not fit (same checks as the C++ op)."""
    check_delta_norm_args(x, x_ref)
    b = x.shape[0]
    named = {"t": t, "jx_now": jx_now, "jt_now": jt_now, "t_ref": t_ref, "jx_ref": jx_ref, "jt_ref": jt_ref,
             "score": score}
    for name, v in named.items():
        if v.dtype != torch.float32 or tuple(v.shape) != (b,):
            raise ValueError(f"sencache: {name} must be float32 of shape [{b}], got {v.dtype} {tuple(v.shape)}")
    for name, v, dtype in (("eps", eps, torch.float32), ("force", force, torch.bool), ("skips", skips, torch.int32),
                           ("flag", flag, torch.int32), ("ticket", ticket, torch.int32)):
        if v.dtype != dtype or v.numel() != 1:
            raise ValueError(f"sencache: {name} must be a one-element {dtype} tensor, got {v.dtype} {tuple(v.shape)}")
    if not 0 <= max_skips <= 2**31 - 1:  # compared with the int32 counter
        raise ValueError(f"sencache: max_skips must be in [0, 2**31 - 1], got {max_skips}")
    for name, v in {**named, "eps": eps, "force": force, "skips": skips, "flag": flag, "ticket": ticket}.items():
        if v.device != x.device:
            raise ValueError(f"sencache: {name} is on {v.device} but x is on {x.device}; keep the state on x's device")


def check_commit_args(flag: torch.Tensor, src: torch.Tensor, base: torch.Tensor | None, dst: torch.Tensor) -> None:
    """Raise ValueError when ``commit``'s arguments do not fit (same checks as the C++ op)."""
    if src.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"sencache::commit: src must be a floating-point tensor, got {src.dtype}")
    for name, v in (("dst", dst), ("base", base)):
        if v is not None and (v.shape != src.shape or v.dtype != src.dtype or v.device != src.device):
            raise ValueError(f"sencache::commit: {name} must match src ({tuple(src.shape)} {src.dtype} {src.device}), "
                             f"got {tuple(v.shape)} {v.dtype} {v.device}; allocate it with torch.empty_like(src)")
    if flag.dtype != torch.int32 or flag.numel() != 1 or flag.device != src.device:
        raise ValueError(f"sencache::commit: flag must be a one-element torch.int32 tensor on {src.device} (the flag "
                         f"written by sencache::decide), got {flag.dtype} {tuple(flag.shape)} on {flag.device}")


def _check_graph_flag(op: str, flag: torch.Tensor) -> None:
    if flag.dtype != torch.int32 or flag.numel() != 1:
        raise ValueError(f"sencache::{op}: flag must be a one-element torch.int32 tensor (the flag written by "
                         f"sencache::decide), got {flag.dtype} of shape {tuple(flag.shape)}")


def check_set_conditional_args(flag: torch.Tensor, handle: int) -> None:
    """Raise ValueError when ``set_conditional``'s arguments do not fit (same checks as the C++ op)."""
    _check_graph_flag("set_conditional", flag)
    if handle == 0:
        raise ValueError("sencache::set_conditional: handle is 0; pass a handle made by "
                         "cudaGraphConditionalHandleCreate")


def check_capture_if_args(flag: torch.Tensor, body_graph: int) -> None:
    """Raise ValueError when ``capture_if``'s arguments do not fit (same checks as the C++ op)."""
    _check_graph_flag("capture_if", flag)
    if body_graph == 0:
        raise ValueError("sencache::capture_if: body_graph is 0; pass the cudaGraph_t of a captured body "
                         "(torch.cuda.CUDAGraph(keep_graph=True).raw_cuda_graph())")


def has_conditional_nodes() -> bool:
    """Whether ``capture_if`` has a CUDA kernel here (the extension was built with CUDA)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key("sencache::capture_if", "CUDA")
    except RuntimeError:  # an extension built before the op existed
        return False


if not HAS_EXTENSION:
    _lib = torch.library.Library("sencache", "DEF")  # noqa: TOR901
    for _schema in SCHEMAS.values():
        _lib.define(_schema)

    @torch.library.impl(_lib, "delta_norm", "CompositeExplicitAutograd")
    def _delta_norm_impl(x, x_ref):
        check_delta_norm_args(x, x_ref)
        return delta_norm_ref(x, x_ref)

    @torch.library.impl(_lib, "decide", "CompositeExplicitAutograd")
    def _decide_impl(*args):
        check_decide_args(*args)
        decide_ref(*args)

    @torch.library.impl(_lib, "commit", "CompositeExplicitAutograd")
    def _commit_impl(flag, src, base, dst):
        check_commit_args(flag, src, base, dst)
        commit_ref(flag, src, base, dst)

    @torch.library.impl(_lib, "set_conditional", "CompositeExplicitAutograd")
    def _set_conditional_impl(flag, handle):
        check_set_conditional_args(flag, handle)
        raise RuntimeError("sencache::set_conditional needs the compiled extension built with CUDA "
                           "(pip install --no-build-isolation -e . on a machine with nvcc and a CUDA torch)")

    @torch.library.impl(_lib, "capture_if", "CompositeExplicitAutograd")
    def _capture_if_impl(flag, body_graph):
        check_capture_if_args(flag, body_graph)
        raise RuntimeError("sencache::capture_if needs the compiled extension built with CUDA "
                           "(pip install --no-build-isolation -e . on a machine with nvcc and a CUDA torch)")

    @torch.library.register_fake("sencache::delta_norm", lib=_lib)
    def _delta_norm_fake(x, x_ref):
        check_delta_norm_args(x, x_ref)
        return x.new_empty((x.shape[0],), dtype=torch.float32)

    @torch.library.register_fake("sencache::decide", lib=_lib)
    def _decide_fake(*args):
        check_decide_args(*args)

    @torch.library.register_fake("sencache::commit", lib=_lib)
    def _commit_fake(flag, src, base, dst):
        check_commit_args(flag, src, base, dst)

    @torch.library.register_fake("sencache::set_conditional", lib=_lib)
    def _set_conditional_fake(flag, handle):
        check_set_conditional_args(flag, handle)


def _decide_cuda(*args):
    """decide's CUDA kernel: the fused Triton launch, or the reference where Triton is missing."""
    check_decide_args(*args)
    (decide_triton if triton is not None else decide_ref)(*args)


_cuda_lib = torch.library.Library("sencache", "IMPL")  # noqa: TOR901
_cuda_lib.impl("decide", _decide_cuda, "CUDA")


def delta_norm(x: torch.Tensor, x_ref: torch.Tensor) -> torch.Tensor:
    """Per-sample ``||x - x_ref||_2`` in float32 (``torch.ops.sencache.delta_norm``); see ``delta_norm_ref``."""
    return torch.ops.sencache.delta_norm(x, x_ref)


def decide(
    x: torch.Tensor,
    t: torch.Tensor,
    jx_now: torch.Tensor,
    jt_now: torch.Tensor,
    eps: torch.Tensor,
    force: torch.Tensor,
    x_ref: torch.Tensor,
    t_ref: torch.Tensor,
    jx_ref: torch.Tensor,
    jt_ref: torch.Tensor,
    skips: torch.Tensor,
    flag: torch.Tensor,
    score: torch.Tensor,
    ticket: torch.Tensor,
    max_skips: int,
) -> None:
    """One SenCache decision with its in-place state update (``torch.ops.sencache.decide``); see ``decide_ref``."""
    torch.ops.sencache.decide(x, t, jx_now, jt_now, eps, force, x_ref, t_ref, jx_ref, jt_ref, skips, flag, score,
                              ticket, max_skips)


def commit(flag: torch.Tensor, src: torch.Tensor, base: torch.Tensor | None, dst: torch.Tensor) -> None:
    """``dst <- src - base`` (or ``src``) when ``flag`` says compute (``torch.ops.sencache.commit``).

    See ``commit_ref``."""
    torch.ops.sencache.commit(flag, src, base, dst)
