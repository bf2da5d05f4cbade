"""Builds the ``sencache_kernels._C`` extension; the project metadata lives in pyproject.toml.

Install with ``pip install --no-build-isolation .`` (``-e .`` for development) into an environment that already has
the torch you will run: the extension is compiled against that torch and must be loaded by the same version. An
isolated build (plain ``pip install .``) compiles against whatever torch pip puts in its build environment.

The build includes the CUDA sources (``csrc/**/*.cu``) only when it can build them for a GPU (``choose_build``): a CUDA
build of torch, nvcc (``CUDA_HOME``), and a GPU architecture list, from ``TORCH_CUDA_ARCH_LIST`` (e.g. ``9.0`` on
Hopper) or from the GPUs visible here. Otherwise it builds the CPU ops and says why in one line (``pip install -v``
shows it; ``sencache_kernels.build_info()`` keeps it). ``SENCACHE_CUDA=0`` forces a CPU-only build, ``SENCACHE_CUDA=1``
fails when the CUDA ops cannot be built.

The ops' contract, ``sencache_kernels/ops.def`` (schemas, argument rules, messages), is #included by the C++ sources
as ``"sencache_kernels/ops.def"`` (the project root is on the include path) and ships with the package
(package_data), where the Python fallback reads it.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    """Paths relative to the project root (setuptools rejects absolute source paths)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


_OFF, _ON = ("0", "off", "false", "no"), ("1", "on", "true", "yes")


def choose_build(requested: str, torch_version: str, torch_cuda: str | None, nvcc: str | None,
                 arch_list: str | None, visible_gpu_archs: Callable[[], list[str]]) -> tuple[bool, str]:
    """Whether to build the CUDA ops, and the one line that says what is built and why.

    Args:
        requested: ``SENCACHE_CUDA`` (``auto`` when unset, ``0`` for CPU only, ``1`` for CUDA or fail).
        torch_version, torch_cuda: ``torch.__version__`` and ``torch.version.cuda`` (None for a CPU build of torch).
        nvcc: the path of nvcc, or None when there is none.
        arch_list: ``TORCH_CUDA_ARCH_LIST`` (None or blank when unset; ``native`` means the visible GPUs).
        visible_gpu_archs: returns the compute capabilities of the visible GPUs (called only when needed).

    Raises:
        RuntimeError: ``SENCACHE_CUDA=1`` and the CUDA ops cannot be built (the message says what is missing).
    """
    wanted = requested.strip().lower() or "auto"
    if wanted not in (*_OFF, *_ON, "auto"):
        raise RuntimeError(f"SENCACHE_CUDA={requested!r}: use 0 (CPU ops only), 1 (CUDA ops or fail) or leave it unset")
    if wanted in _OFF:
        return False, "sencache: building the CPU ops only (SENCACHE_CUDA=0)"
    arches, source, missing = None, "", None
    if torch_cuda is None:
        missing = f"torch {torch_version} is a CPU build (a CUDA build of torch is needed for the CUDA ops)"
    elif nvcc is None:
        missing = (f"torch {torch_version} has CUDA {torch_cuda} but nvcc was not found (set CUDA_HOME to a CUDA "
                   "toolkit)")
    else:
        arch_list = (arch_list or "").strip()
        if arch_list and arch_list != "native":
            arches, source = arch_list, "TORCH_CUDA_ARCH_LIST"
        else:
            found = visible_gpu_archs()
            if found:
                arches, source = ";".join(found), "the visible GPUs"
            else:
                missing = ("no GPU is visible and TORCH_CUDA_ARCH_LIST is unset (set it to the target GPUs, e.g. "
                           "TORCH_CUDA_ARCH_LIST=9.0 for Hopper, to build the CUDA ops on this machine)")
    if missing is None:
        return True, f"sencache: building the CPU and CUDA ops (CUDA {torch_cuda}, {nvcc}) for {arches} ({source})"
    if wanted in _ON:
        raise RuntimeError(f"SENCACHE_CUDA={requested} but the CUDA ops cannot be built: {missing}; "
                           "unset SENCACHE_CUDA to build the CPU ops only")
    return False, f"sencache: building the CPU ops only: {missing}"


def _visible_gpu_archs() -> list[str]:
    try:
        return [".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(torch.cuda.device_count())]
    except Exception:  # no driver or no device: nothing visible
        return []


def _nvcc() -> str | None:
    if CUDA_HOME is None:
        return None
    path = os.path.join(CUDA_HOME, "bin", "nvcc")
    return path if os.path.isfile(path) else None


def _use_cuda() -> tuple[bool, str]:
    return choose_build(os.environ.get("SENCACHE_CUDA", "auto"), torch.__version__, torch.version.cuda, _nvcc(),
                        os.environ.get("TORCH_CUDA_ARCH_LIST"), _visible_gpu_archs)


def _link_args() -> list[str]:
    """Link libstdc++ as the shared library torch uses, named explicitly where the compiler does not resolve
    ``libstdc++.so`` (then a plain link can take the static archive). On two H100 machines a build carried its own
    copy of libstdc++ and formatting a shape into an error message crashed the process; that this was the cause is
    inferred from the backtrace (tests/test_setup.py checks every build for such a copy)."""
    cxx = os.environ.get("CXX", "c++")
    try:
        found = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                               check=False).stdout.strip()
    except OSError:
        return []
    return [] if os.path.isabs(found) and os.path.exists(found) else ["-l:libstdc++.so.6"]


def _extension(use_cuda: bool):
    sources = _sources("csrc/sencache/*.cpp") + ["csrc/python_module.cpp"]
    # The C++ standard is left to torch.utils.cpp_extension, which passes the one torch's headers need (C++20 for
    # torch 2.13: they only warn under C++17); our sources are C++17. -g0 drops the -g of Python's CFLAGS (a faster
    # build and a .so of ~100 KB instead of ~3.4 MB). -ffp-contract=off: the decision must round like the reference.
    cxx = ["-O3", "-g0", "-ffp-contract=off"]
    include_dirs = [os.path.join(ROOT, "csrc"), ROOT]  # ROOT: for "sencache_kernels/ops.def"
    link = _link_args()
    if use_cuda:
        return CUDAExtension(
            "sencache_kernels._C",
            sources + _sources("csrc/**/*.cu"),
            include_dirs=include_dirs,
            define_macros=[("SENCACHE_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-Xcompiler", "-ffp-contract=off"]},
            extra_link_args=link,
        )
    return CppExtension("sencache_kernels._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                        extra_link_args=link)


def object_filenames(original):
    """Object names that keep the source's extension (``commit.cpp.o``, ``commit.cu.o``, as CMake names them): an op's
    ``csrc/sencache/<op>.cpp`` and ``<op>.cu`` share a stem, and distutils' ``<stem>.o`` would let one overwrite the
    other. ``original`` is the compiler's own ``object_filenames``."""

    def named(source_filenames, strip_dir=False, output_dir=""):
        sources = list(source_filenames)
        objects = original(sources, strip_dir=strip_dir, output_dir=output_dir)
        return [f"{os.path.splitext(o)[0]}{os.path.splitext(s)[1]}{os.path.splitext(o)[1]}"
                for s, o in zip(sources, objects, strict=True)]

    return named


def unity_sources(sources: list[str], build_dir: str) -> list[str]:
    """``sources`` with the ops' C++ files (``csrc/sencache/*.cpp``) replaced by one file in ``build_dir`` that includes
    them all: one translation unit, so torch's headers are parsed and their templates instantiated once (on the 2-core
    CI machine the CPU build took 46 s, 82 s of CPU, with the files one by one; 20-24 s as one). CMakeLists.txt builds
    the library the same way (UNITY_BUILD); the CUDA sources and the Python module stay files of their own."""
    ops = [s for s in sources if os.path.dirname(s) == os.path.join("csrc", "sencache") and s.endswith(".cpp")]
    text = "// Generated by setup.py (unity_sources): the ops' C++ sources as one translation unit.\n" + "".join(
        f'#include "{os.path.join(ROOT, s)}"\n' for s in ops)
    path = os.path.join(build_dir, "sencache_unity.cpp")
    os.makedirs(build_dir, exist_ok=True)
    if not os.path.isfile(path) or Path(path).read_text() != text:  # rewritten only when the list changes
        Path(path).write_text(text)
    return [path] + [s for s in sources if s not in ops]


BUILD_INFO = "_build_info.json"  # next to the extension; read by sencache_kernels.build_info()


class BuildExtensionKeepingObjectNames(BuildExtension):
    """torch's ``BuildExtension`` with ``object_filenames`` and ``unity_sources`` above; it prints what it builds (one
    line) and records it, with the torch it compiles against, in ``sencache_kernels/_build_info.json``."""

    def build_extensions(self) -> None:
        print(BUILD_LINE, file=sys.stderr, flush=True)
        self.compiler.object_filenames = object_filenames(self.compiler.object_filenames)
        super().build_extensions()
        record = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_ops": USE_CUDA,
                  "message": BUILD_LINE}
        for ext in self.extensions:
            path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), BUILD_INFO)
            with open(path, "w") as f:
                json.dump(record, f, indent=1)

    def build_extension(self, ext) -> None:
        """Compiles ``ext`` with its ops' C++ sources as one translation unit (:func:`unity_sources`)."""
        sources, depends = ext.sources, ext.depends
        # the original sources stay dependencies: an edited op file makes the extension out of date
        ext.sources, ext.depends = unity_sources(sources, self.build_temp), depends + sources
        try:
            super().build_extension(ext)
        finally:
            ext.sources, ext.depends = sources, depends

    def copy_extensions_to_source(self) -> None:
        """In-place and editable builds: the build record goes next to the extension in the source tree too."""
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace, regular = self._get_inplace_equivalent(build_py, ext)
            self.copy_file(os.path.join(os.path.dirname(regular), BUILD_INFO),
                           os.path.join(os.path.dirname(inplace), BUILD_INFO), level=self.verbose)


USE_CUDA, BUILD_LINE = _use_cuda()
setup(
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"]),
    # The reference model's checkpoint, training record, sample grid and SenCache profile ship with the package.
    # The ops' contract (sencache_kernels/ops.def), read by the Python fallback at import.
    package_data={"sencache.reference": ["checkpoint/*"], "sencache_kernels": ["ops.def"]},
    ext_modules=[_extension(USE_CUDA)],
    cmdclass={"build_ext": BuildExtensionKeepingObjectNames},
    zip_safe=False,
)
