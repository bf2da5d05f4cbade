"""``build_info()``: what this installation of ``sencache_kernels`` can run, to check an install.

``python -c "import sencache_kernels as sk; print(sk.build_info())"`` prints whether the compiled extension loaded,
which torch it was compiled against (setup.py records it in ``_build_info.json`` next to the extension) and which it
runs with, whether it has the CUDA ops and CUDA-graph conditional nodes, and whether Triton can run the fused decision.
Nothing here initialises CUDA unless ``build_info()`` is called. Importing the package warns once when the loaded
extension was compiled against another torch than the one running (torch's C++ API is not stable across versions: such
an extension can load and still crash or misbehave).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sencache_kernels import ops
from sencache_kernels.conditional import has_conditional_nodes

RECORD = Path(__file__).with_name("_build_info.json")


@dataclass(frozen=True)
class BuildInfo:
    """See :func:`build_info`. ``str()`` gives one line per field, with what to do where something is missing."""

    extension: bool
    built_against_torch: str | None
    torch: str
    torch_cuda: str | None
    cuda_ops: bool
    conditional_nodes: bool
    triton: str | None
    cuda_device: bool
    build_message: str | None
    notes: tuple[str, ...]

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        yes = {True: "yes", False: "no"}
        lines = [
            f"extension:          {yes[self.extension]}",
            f"built against:      torch {self.built_against_torch or 'unknown'}",
            f"running:            torch {self.torch} (CUDA {self.torch_cuda or 'none'}); CUDA device: "
            f"{yes[self.cuda_device]}",
            f"CUDA ops:           {yes[self.cuda_ops]}",
            f"conditional nodes:  {yes[self.conditional_nodes]}",
            f"Triton:             {self.triton or 'not installed'}",
        ]
        if self.build_message:
            lines.append(f"build:              {self.build_message.removeprefix('sencache: ')}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def build_info() -> BuildInfo:
    """What this installation can run: the extension, its CUDA ops and conditional nodes, Triton (see the module
    docstring). ``notes`` say what to do where a part is missing or does not match the running torch."""
    record = _record()
    built = record.get("torch")
    cuda_ops = ops.HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("sencache::commit", "CUDA")
    triton = _triton_version()
    cuda_device = torch.cuda.is_available()
    notes = []
    if not ops.HAS_EXTENSION:
        why = ("SENCACHE_DISABLE_EXTENSION=1" if os.environ.get("SENCACHE_DISABLE_EXTENSION", "0") == "1"
               else "not built, or it failed to load (see the warning at import)")
        notes.append(f"the compiled extension is not loaded ({why}): the ops run their pure-torch references. Build "
                     "it with `pip install --no-build-isolation .` in the repository, in this environment")
    if built is not None and built != torch.__version__:
        notes.append(f"the extension was compiled against torch {built} but torch {torch.__version__} is running; "
                     "reinstall with `pip install --no-build-isolation .` so that it is compiled against this torch")
    if ops.HAS_EXTENSION and built is None:
        notes.append("the extension has no build record (built before build records existed); reinstall to get one")
    if cuda_device and not cuda_ops:
        notes.append("a CUDA device is visible but the extension has no CUDA ops (graph mode falls back to eager): "
                     "reinstall with nvcc on the PATH and TORCH_CUDA_ARCH_LIST set, e.g. 9.0 for Hopper")
    if cuda_device and triton is None:
        notes.append("Triton is not installed: on CUDA the decision runs its pure-torch reference (several kernels "
                     "instead of one); install torch's matching triton")
    return BuildInfo(extension=ops.HAS_EXTENSION, built_against_torch=built, torch=torch.__version__,
                     torch_cuda=torch.version.cuda, cuda_ops=bool(cuda_ops), conditional_nodes=has_conditional_nodes(),
                     triton=triton, cuda_device=cuda_device, build_message=record.get("message"), notes=tuple(notes))


def _record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.is_file() else {}


def warn_if_mismatched() -> None:
    """One warning when the loaded extension was compiled against another torch (called at import)."""
    built = _record().get("torch") if ops.HAS_EXTENSION else None
    if built is not None and built != torch.__version__:
        warnings.warn(
            f"sencache_kernels: the compiled extension was built against torch {built} but torch {torch.__version__} "
            "is running, which can crash or give wrong results; reinstall SenCache with `pip install "
            "--no-build-isolation .` in this environment (or set SENCACHE_DISABLE_EXTENSION=1 to use the pure-torch "
            "ops)",
            stacklevel=3,
        )
