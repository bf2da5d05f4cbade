"""The CUDA sources (csrc/**/*.cu) compile for Hopper on a machine without a GPU.

The CPU torch wheel has no CUDA headers, so the check compiles against the headers of the CUDA torch wheel and the
NVIDIA library wheels it includes (cuBLAS, cuSPARSE, cuSOLVER), fetched with pip from the local package index and
unpacked once into a cache (``$SENCACHE_CACHE`` or ``~/.cache/sencache``; about 70 MB of headers). nvcc compiles
every file with the extension's flags (``TORCH_CUDA_ARCH_LIST=9.0``); nothing is linked or run. The files compile
side by side (about a minute each on one core of the 2-core CI machine). Skips, saying why, where nvcc or the wheels
are missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The CUDA torch build on the local index, and the NVIDIA header wheels its ATen/cuda headers include.
WHEELS = ("torch==2.14.1", "nvidia-cublas==13.1.1.3", "nvidia-cusparse==12.6.3.3", "nvidia-cusolver==12.0.4.66")
CU_SOURCES = sorted(ROOT.glob("csrc/**/*.cu"))


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidate = Path(home) / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else shutil.which("nvcc")


def _headers() -> Path:
    """The unpacked include trees (``torch/include``, ``nvidia/cu13/include``), fetched on first use."""
    cache = Path(os.environ.get("SENCACHE_CACHE", Path.home() / ".cache" / "sencache"))
    root = cache / ("cuda-headers-" + "-".join(w.replace("==", "") for w in WHEELS))
    if (root / "complete").exists():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                  "--quiet", "-d", tmp, *WHEELS], capture_output=True, text=True)
        if fetched.returncode != 0:
            pytest.skip(f"the CUDA header wheels {WHEELS} are not on this machine's package index: "
                        f"{fetched.stderr.strip().splitlines()[-1:]}")
        shutil.rmtree(root, ignore_errors=True)
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                z.extractall(root, [n for n in z.namelist() if "/include/" in n and not n.endswith("/")])
    (root / "complete").touch()
    return root


@pytest.mark.slow
@pytest.mark.skipif(_nvcc() is None, reason="needs nvcc (CUDA_HOME or PATH)")
def test_cuda_sources_compile_for_hopper(tmp_path):
    """Every .cu file, compiled at once (one nvcc per file, side by side on the machine's cores)."""
    assert CU_SOURCES, "no CUDA sources found under csrc/"
    headers = _headers()
    includes = [ROOT / "csrc", headers / "torch" / "include", headers / "torch" / "include" / "torch" / "csrc" / "api"
                / "include", *sorted(headers.glob("nvidia/*/include"))]
    running = {}
    for source in CU_SOURCES:
        obj = tmp_path / (source.stem + ".o")
        cmd = [_nvcc(), "-c", str(source), "-o", str(obj), "-std=c++20", "-O3",
               "-gencode", "arch=compute_90,code=sm_90", "--expt-relaxed-constexpr", "-DSENCACHE_WITH_CUDA=1",
               "-Xcompiler", "-ffp-contract=off", *(f"-I{p}" for p in includes)]
        running[source] = (obj, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    failures = []
    for source, (obj, proc) in running.items():
        _, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            failures.append(f"nvcc failed on {source.relative_to(ROOT)}:\n{stderr[-4000:]}")
        elif obj.stat().st_size == 0:
            failures.append(f"nvcc wrote an empty object for {source.relative_to(ROOT)}")
    assert not failures, "\n".join(failures)
