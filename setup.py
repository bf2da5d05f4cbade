"""Builds the ``sencache_kernels._C`` extension; the project metadata lives in pyproject.toml.

Install for development with ``pip install --no-build-isolation --no-deps -e .`` (an isolated build environment
would download a fresh torch). With a CUDA build of torch and nvcc found (``CUDA_HOME``), the extension is built
as a ``CUDAExtension`` with the ``csrc/**/*.cu`` sources for the architectures in ``TORCH_CUDA_ARCH_LIST``
(read by torch.utils.cpp_extension; e.g. ``TORCH_CUDA_ARCH_LIST=9.0`` on Hopper). ``SENCACHE_CUDA=0`` forces a
CPU-only build, ``SENCACHE_CUDA=1`` fails when CUDA is unavailable.

The ops' contract, ``sencache_kernels/ops.def`` (schemas, argument rules, messages), is #included by the C++ sources as
``"sencache_kernels/ops.def"`` (the project root is on the include path) and ships with the package (package_data), where
the Python fallback reads it.
"""

from __future__ import annotations

import glob
import os
import subprocess

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    """Paths relative to the project root (setuptools rejects absolute source paths)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _use_cuda() -> bool:
    wanted = os.environ.get("SENCACHE_CUDA", "auto").strip().lower()
    available = torch.version.cuda is not None and CUDA_HOME is not None
    if wanted in ("0", "off", "false", "no"):
        return False
    if wanted in ("1", "on", "true", "yes") and not available:
        raise RuntimeError(
            f"SENCACHE_CUDA={wanted} but CUDA is unavailable (torch.version.cuda={torch.version.cuda}, "
            f"CUDA_HOME={CUDA_HOME}); install a CUDA build of torch and set CUDA_HOME to the toolkit, "
            "or unset SENCACHE_CUDA"
        )
    return available


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


def _extension():
    sources = _sources("csrc/sencache/*.cpp") + ["csrc/python_module.cpp"]
    # The C++ standard is left to torch.utils.cpp_extension, which passes the one torch's headers need (C++20 for
    # torch 2.13: they only warn under C++17); our sources are C++17. -g0 drops the -g of Python's CFLAGS (a faster
    # build and a .so of ~100 KB instead of ~3.4 MB). -ffp-contract=off: the decision must round like the reference.
    cxx = ["-O3", "-g0", "-ffp-contract=off"]
    include_dirs = [os.path.join(ROOT, "csrc"), ROOT]  # ROOT: for "sencache_kernels/ops.def"
    link = _link_args()
    if _use_cuda():
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


class BuildExtensionKeepingObjectNames(BuildExtension):
    """torch's ``BuildExtension`` with ``object_filenames`` above."""

    def build_extensions(self) -> None:
        self.compiler.object_filenames = object_filenames(self.compiler.object_filenames)
        super().build_extensions()


setup(
    packages=find_packages(exclude=["tests", "tests.*", "benchmarks", "benchmarks.*"]),
    # The reference model's checkpoint, training record, sample grid and SenCache profile ship with the package.
    # The ops' contract (sencache_kernels/ops.def), read by the Python fallback at import.
    package_data={"sencache.reference": ["checkpoint/*"], "sencache_kernels": ["ops.def"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtensionKeepingObjectNames},
    zip_safe=False,
)
