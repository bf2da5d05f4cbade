"""What the package declares (pyproject.toml) against what it imports, and how an install reports itself."""

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import tomllib
import torch

import sencache_kernels as sk

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FIRST_PARTY = {"sencache", "sencache_kernels"}
BUILD_TOOLS = {"setuptools", "wheel", "ninja", "pybind11", "cmake"}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


RUNTIME = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = {extra: {_name(r) for r in reqs} for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether an import runs only when called (inside a function) or tolerates a missing module (try/except
    ImportError)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
        if isinstance(node, ast.Try) and any(
            h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
        ):
            return True
    return False


def third_party_imports() -> list[tuple[str, str, bool]]:
    """``(top-level module, file, guarded)`` for every import of a module outside the standard library and this
    project, in ``sencache/`` and ``sencache_kernels/`` (lazy imports inside functions included)."""
    found = []
    for pkg in FIRST_PARTY:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.append((top, str(path.relative_to(ROOT)), _guarded(node, parents)))
    return found


def test_every_imported_module_is_declared():
    """Each third-party module the two packages import belongs to a distribution in ``dependencies`` or, for an
    import that only runs when called or tolerates its absence, in an extra; build tools are not runtime
    dependencies."""
    dists = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {m for m, _, _ in imports} >= {"torch", "diffusers", "safetensors", "numpy", "PIL", "triton", "matplotlib"}
    undeclared, unguarded = [], []
    for module, path, guarded in imports:
        names = {_name(d) for d in dists.get(module, [module])}
        if names & RUNTIME:
            continue
        in_extra = [e for e, reqs in EXTRAS.items() if names & reqs]
        if not in_extra:
            undeclared.append(f"{module} ({path})")
        elif not guarded:
            unguarded.append(f"{module} ({path}; extra {in_extra[0]}) is imported at module level")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert not unguarded, unguarded
    imported = {_name(d) for m, _, _ in imports for d in dists.get(m, [m])}
    assert not RUNTIME & BUILD_TOOLS, f"build tools among the runtime dependencies: {RUNTIME & BUILD_TOOLS}"
    # transformers is imported by diffusers' Wan/CogVideoX/LTX pipelines (the reference model's is a WanPipeline),
    # whether or not this project's code imports it: the one declared runtime dependency the scan may not see.
    assert "transformers" in RUNTIME
    unused = RUNTIME - imported - {"transformers"}
    assert not unused, f"declared runtime dependencies that nothing imports: {unused}"
    assert "matplotlib" in EXTRAS["plots"] and "triton" in EXTRAS["cuda"]
    assert "matplotlib" not in RUNTIME and "triton" not in RUNTIME


def test_torch_is_never_unpinned():
    """No install path lets pip pick any torch it likes: every torch requirement has a version bound, the CI's
    requirements-torch.txt pins the CPU wheel exactly, and requirements-dev.txt does not name torch at all."""
    reqs = [*PYPROJECT["build-system"]["requires"], *PYPROJECT["project"]["dependencies"],
            *(r for rs in PYPROJECT["project"]["optional-dependencies"].values() for r in rs)]
    torch_reqs = [r for r in reqs if _name(r) == "torch"]
    assert torch_reqs and all(re.search(r"(>=|==|~=)\s*2\.\d+", r) for r in torch_reqs), torch_reqs

    def lines(name: str) -> list[str]:
        return [ln.split("#")[0].strip() for ln in (ROOT / name).read_text().splitlines() if ln.split("#")[0].strip()]

    pinned = [ln for ln in lines("requirements-torch.txt") if _name(ln) in {"torch", "triton"}]
    assert sorted(_name(ln) for ln in pinned) == ["torch", "triton"] and all("==" in ln for ln in pinned), pinned
    assert not [ln for ln in lines("requirements-dev.txt") if _name(ln) == "torch"]


def test_build_info_reports_this_installation():
    info = sk.build_info()
    assert info.extension is sk.HAS_EXTENSION
    assert info.torch == torch.__version__ and info.torch_cuda == torch.version.cuda
    assert info.conditional_nodes is sk.has_conditional_nodes()
    assert info.cuda_device is torch.cuda.is_available()
    assert info.triton == importlib.metadata.version("triton")  # requirements-torch.txt installs it
    if torch.version.cuda is None:
        assert not info.cuda_ops and not info.conditional_nodes
    text = str(info)
    for label in ("extension:", "built against:", "CUDA ops:", "conditional nodes:", "Triton:"):
        assert label in text
    assert info.as_dict()["torch"] == torch.__version__


def test_build_record_matches_the_running_torch():
    """setup.py records the torch it compiled against next to the extension; ``make install`` rebuilds when
    setup.py changes, so a fresh checkout always has the record."""
    if not sk.HAS_EXTENSION:
        pytest.skip("the extension is not built here")
    record_path = Path(sk.__file__).with_name("_build_info.json")
    if not record_path.is_file():
        pytest.skip("extension built by an older setup.py (no build record); `make install` rebuilds it")
    record = json.loads(record_path.read_text())
    assert record["torch"] == torch.__version__ and record["message"].startswith("sencache: building the ")
    assert record["cuda_ops"] == sk.build_info().cuda_ops
    assert sk.build_info().notes == ()


def test_build_info_without_the_extension_says_what_to_do():
    code = "import sencache_kernels as sk; i = sk.build_info(); print(i.extension); print(i)"
    env = {**os.environ, "SENCACHE_DISABLE_EXTENSION": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "False"
    assert "SENCACHE_DISABLE_EXTENSION=1" in out.stdout and "pip install --no-build-isolation" in out.stdout


def test_an_extension_built_against_another_torch_is_flagged(monkeypatch, tmp_path):
    """Seen on the dev CPU: an extension compiled by an isolated build against torch 2.14.1+cu130 loaded under
    2.13.0+cpu without any error. Importing the package warns, and build_info() says what to do."""
    from sencache_kernels import installation as bi

    if not sk.HAS_EXTENSION:
        pytest.skip("the extension is not built here")
    record = tmp_path / "_build_info.json"
    record.write_text(json.dumps({"torch": "2.0.0+other", "cuda_ops": False, "message": "sencache: building x"}))
    monkeypatch.setattr(bi, "RECORD", record)
    with pytest.warns(UserWarning, match=r"built against torch 2\.0\.0\+other but torch .* is running.*"
                                         r"--no-build-isolation"):
        bi.warn_if_mismatched()
    info = sk.build_info()
    assert info.built_against_torch == "2.0.0+other"
    assert any("compiled against torch 2.0.0+other" in n and "--no-build-isolation" in n for n in info.notes)
    record.write_text(json.dumps({"torch": torch.__version__}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bi.warn_if_mismatched()  # the matching torch: no warning


def test_without_matplotlib_the_plotting_commands_say_which_extra(monkeypatch, capsys):
    """matplotlib is the `plots` extra: without it `sencache quality` and `sencache train-reference` stop before any
    work with one line naming the extra, and the plotting helper raises an ImportError that names it."""
    from sencache.cli import main
    from sencache.plotting import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'sencache\[plots\]'"):
        pyplot()
    for command in ("quality", "train-reference"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--steps", "6"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"sencache {command} draws plots with matplotlib" in err, err
        assert "sencache[plots]" in err
