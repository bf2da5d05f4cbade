"""The CMake build of the C++ library against libtorch, and its smoke program (csrc/smoke/smoke.cpp)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")]


def _ninja() -> str | None:
    venv_ninja = Path(sys.executable).with_name("ninja")
    return shutil.which("ninja") or (str(venv_ninja) if venv_ninja.exists() else None)


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_cmake_build_and_smoke(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    build = tmp_path / "build"
    configure = [
        "cmake",
        "-S",
        str(ROOT),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
    ]
    ninja = _ninja()
    if ninja is not None:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    _run(configure)
    _run(["cmake", "--build", str(build), "--parallel", "2"])

    # A separate process: the smoke program registers TORCH_LIBRARY(sencache) itself (one per process).
    proc = subprocess.run([str(build / "sencache_smoke")], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"sencache_smoke failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "sencache smoke: OK" in proc.stdout, proc.stdout
