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


def test_setup_compiles_the_op_sources_as_one_unit(setup_kwargs, tmp_path):
    """The ops' C++ files are compiled through one generated file that includes each of them once; the CUDA sources
    and the Python module keep their own units, and an unchanged list leaves the file (and ninja's work) alone."""
    (ext,) = setup_kwargs["ext_modules"]
    cu = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("csrc/**/*.cu"))
    unity, *rest = setup_kwargs["module"]["unity_sources"](ext.sources + cu, str(tmp_path))
    assert rest == ["csrc/python_module.cpp", *cu]
    ops = [s for s in ext.sources if s.startswith("csrc/sencache/")]
    included = re.findall(r'^#include "(.+)"$', Path(unity).read_text(), re.M)
    assert included == [str(ROOT / s) for s in ops] and len(ops) >= 6
    os.utime(unity, ns=(0, 0))
    setup_kwargs["module"]["unity_sources"](ext.sources, str(tmp_path))
    assert os.stat(unity).st_mtime_ns == 0


def _no_gpu() -> list[str]:
    return []


def _must_not_probe() -> list[str]:
    raise AssertionError("the visible GPUs were probed although the answer was already known")


@pytest.mark.parametrize(
    "requested, torch_cuda, nvcc, arch_list, gpus, cuda, says",
    [
        # the machine: CUDA torch (as an isolated build installs it) and nvcc, but no GPU and no arch list
        ("auto", "13.0", "/usr/local/bin/nvcc", None, _no_gpu, False, "no GPU is visible and TORCH_CUDA_ARCH_LIST"),
        ("auto", "13.0", "/usr/local/bin/nvcc", "  ", _no_gpu, False, "TORCH_CUDA_ARCH_LIST=9.0"),
        ("auto", "13.0", "/usr/local/bin/nvcc", "native", _no_gpu, False, "no GPU is visible"),
        ("auto", None, "/usr/local/bin/nvcc", "9.0", _must_not_probe, False, "is a CPU build"),
        ("auto", "13.0", None, "9.0", _must_not_probe, False, "nvcc was not found"),
        ("0", "13.0", "/usr/local/cuda/bin/nvcc", "9.0", _must_not_probe, False, "SENCACHE_CUDA=0"),
        ("auto", "13.0", "/usr/local/cuda/bin/nvcc", "9.0", _must_not_probe, True, "for 9.0 (TORCH_CUDA_ARCH_LIST)"),
        ("1", "13.0", "/usr/local/cuda/bin/nvcc", None, lambda: ["9.0", "8.0"], True, "for 9.0;8.0 (the visible GPUs)"),
        ("", "13.0", "/usr/local/cuda/bin/nvcc", "native", lambda: ["9.0"], True, "for 9.0 (the visible GPUs)"),
    ],
)
def test_build_chooses_cuda_only_when_it_can_build_for_a_gpu(setup_kwargs, requested, torch_cuda, nvcc, arch_list,
                                                              gpus, cuda, says):
    choose = setup_kwargs["module"]["choose_build"]
    use_cuda, line = choose(requested, "2.14.1", torch_cuda, nvcc, arch_list, gpus)
    assert use_cuda is cuda
    assert says in line and "\n" not in line
    assert line.startswith("sencache: building the CPU and CUDA ops" if cuda else "sencache: building the CPU ops only")


@pytest.mark.parametrize(
    "torch_cuda, nvcc, arch_list, missing",
    [(None, "/usr/local/bin/nvcc", "9.0", "is a CPU build"), ("13.0", None, "9.0", "nvcc was not found"),
     ("13.0", "/usr/local/bin/nvcc", None, "no GPU is visible")],
)
def test_build_forced_to_cuda_says_what_is_missing(setup_kwargs, torch_cuda, nvcc, arch_list, missing):
    choose = setup_kwargs["module"]["choose_build"]
    with pytest.raises(RuntimeError, match=rf"SENCACHE_CUDA=1 but the CUDA ops cannot be built: .*{missing}.*unset"):
        choose("1", "2.14.1", torch_cuda, nvcc, arch_list, _no_gpu)
    with pytest.raises(RuntimeError, match=r"use 0 \(CPU ops only\), 1 .* or leave it unset"):
        choose("maybe", "2.14.1", torch_cuda, nvcc, arch_list, _no_gpu)


def test_build_on_this_machine_chooses_cpu_without_a_gpu(setup_kwargs, monkeypatch):
    """What setup.py decides here, with its own probes (nvcc may be installed; no GPU is visible)."""
    if sk.build_info().cuda_device:
        pytest.skip("a GPU is visible here")
    monkeypatch.delenv("SENCACHE_CUDA")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    use_cuda, line = setup_kwargs["module"]["_use_cuda"]()
    assert not use_cuda and line.startswith("sencache: building the CPU ops only: ")
