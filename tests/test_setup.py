"""The extension as setup.py builds it: what it links against, which sources and data files it takes."""

import os
import re
import runpy
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import sencache_kernels as sk

# Functions that only libstdc++ itself defines (not inline templates an object may carry a copy of).
_LIBSTDCXX_OWN = re.compile(r" [TtWw] std::(locale::|ios_base::|codecvt<)")


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("nm") is None, reason="needs Linux and nm")
def test_extension_uses_the_shared_libstdcxx():
    """A copy of libstdc++ inside the extension crashed the process (SIGSEGV) when a C++ error message formatted a
    shape: streams made by the copy were written by torch's libstdc++ (seen on an H100 machine, where the build carried
    ``std::codecvt`` code). setup.py links the shared library explicitly where the compiler offers only the archive."""
    so = sk._C.__file__
    symbols = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True, check=True).stdout
    own = [line for line in symbols.splitlines() if _LIBSTDCXX_OWN.search(line)]
    assert not own, f"{so} defines libstdc++'s own functions (a static copy): {own[:3]}"


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_kwargs(monkeypatch):
    """What setup.py passes to ``setuptools.setup`` (run without building anything)."""
    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.setenv("SENCACHE_CUDA", "0")
    captured["module"] = runpy.run_path(str(ROOT / "setup.py"))
    return captured


def test_setup_builds_every_source_and_finds_the_contract(setup_kwargs):
    """Every op's C++ file is compiled, the sources' ``#include "sencache_kernels/ops.def"`` resolves, and the
    contract ships with the package (the Python fallback reads it)."""
    (ext,) = setup_kwargs["ext_modules"]
    want = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/sencache/*.cpp")) + ["csrc/python_module.cpp"]
    assert ext.sources == want
    for stem in ("ops", "checks", "delta_norm", "decide", "commit", "conditional"):
        assert f"csrc/sencache/{stem}.cpp" in ext.sources
    assert any((Path(d) / "sencache_kernels" / "ops.def").is_file() for d in ext.include_dirs), ext.include_dirs
    assert "ops.def" in setup_kwargs["package_data"]["sencache_kernels"]
    assert (resources.files("sencache_kernels") / "ops.def").is_file()


def test_setup_object_names_keep_cpp_and_cu_apart(setup_kwargs):
    """``<op>.cpp`` and ``<op>.cu`` share a stem; their objects must not (one would overwrite the other)."""
    from setuptools._distutils.ccompiler import new_compiler

    compiler = new_compiler()
    compiler.src_extensions += [".cu"]  # as torch's BuildExtension registers it
    names = setup_kwargs["module"]["object_filenames"](compiler.object_filenames)
    sources = [str(p.relative_to(ROOT)) for p in sorted(ROOT.glob("csrc/**/*.cpp")) + sorted(ROOT.glob("csrc/**/*.cu"))]
    assert {"csrc/sencache/commit.cpp", "csrc/sencache/commit.cu"} <= set(sources)
    objects = names(sources, output_dir="build")
    assert len(set(objects)) == len(sources), objects
    assert os.path.join("build", "csrc", "sencache", "commit.cu.o") in objects
