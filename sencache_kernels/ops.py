"""The one place where the ``sencache::`` ops are registered with ``torch.library``.

The contract of every op (schema, argument rules, error messages) is written once, in ``sencache_kernels/ops.def``:
C++ ``#include``s it with macros (``csrc/sencache/ops.cpp`` defines the schemas, ``csrc/sencache/checks.cpp``
interprets the rules); this module parses it (``SCHEMAS``, one ``checks.Checker`` per op). Each op then lives under
its own stem: ``sencache_kernels/<op>.py`` holds its reference (``*_ref``, the CPU path and test oracle), its public
wrapper, and the fallback kernel and fake it hands to ``register``; ``csrc/sencache/<op>.cpp`` its CPU and Meta
kernels, ``<op>.cu`` its CUDA kernel.

The compiled extension (``sencache_kernels._C``) defines the library with ``TORCH_LIBRARY(sencache, ...)``. Without it
(no compiler, or ``SENCACHE_DISABLE_EXTENSION=1``), after one warning, the schemas are defined here and ``register``
installs each op's pure-torch kernel and fake, both checking their arguments with the same rules and messages as C++.
Either way the ops are ``torch.ops.sencache.{delta_norm,decide,commit,set_conditional,capture_if}``.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sencache_kernels.checks import Checker

DEF_FILE = Path(__file__).with_name("ops.def")


def parse_def(text: str) -> tuple[dict[str, str], dict[str, str], dict[str, list[tuple[str, ...]]]]:
    """The schemas, message templates and per-op rules of an ``ops.def`` text (see its header for the syntax).

    Its ``//`` lines are dropped; ``#`` preprocessor lines are Python comments; what remains is a sequence of calls
    whose arguments are names and string literals, which Python's own parser reads."""
    schemas: dict[str, str] = {}
    messages: dict[str, str] = {}
    rules: dict[str, list[tuple[str, ...]]] = {}
    for stmt in ast.parse(re.sub(r"^\s*//.*$", "", text, flags=re.M)).body:
        call = stmt.value  # type: ignore[attr-defined]
        fields = [a.id if isinstance(a, ast.Name) else a.value for a in call.args]
        macro = call.func.id
        if macro == "SENCACHE_OP":
            schemas[fields[0]] = fields[1]
        elif macro == "SENCACHE_MESSAGE":
            messages[fields[0]] = fields[1]
        elif macro == "SENCACHE_CHECK":
            rules.setdefault(fields[0], []).append(tuple(fields[1:]))
        else:
            raise ValueError(f"{DEF_FILE}: unknown entry {macro}")
    return schemas, messages, rules


SCHEMAS, MESSAGES, RULES = parse_def(DEF_FILE.read_text())
CHECKS = {op: Checker(op, schema, RULES.get(op, []), MESSAGES) for op, schema in SCHEMAS.items()}


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

if not HAS_EXTENSION:
    _lib = torch.library.Library("sencache", "DEF")  # noqa: TOR901
    for _schema in SCHEMAS.values():
        _lib.define(_schema)
_cuda_lib = torch.library.Library("sencache", "IMPL")  # noqa: TOR901


def checked(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` preceded by the argument checks of ``sencache::<name>``."""
    check = CHECKS[name]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        check(*args, **kwargs)
        return fn(*args, **kwargs)

    return run


def register(name: str, kernel: Callable[..., Any], fake: Callable[..., Any]) -> None:
    """Install the pure-Python fallback of ``sencache::<name>``: ``kernel`` for every device and ``fake`` for tracing,
    both behind the op's checks. A no-op with the extension, whose C++ CPU and Meta kernels take their place."""
    if HAS_EXTENSION:
        return
    _lib.impl(name, checked(name, kernel), "CompositeExplicitAutograd")
    torch.library.register_fake(f"sencache::{name}", checked(name, fake), lib=_lib)


def register_cuda(name: str, kernel: Callable[..., Any]) -> None:
    """Install ``kernel`` (behind the op's checks) as the CUDA kernel of ``sencache::<name>``, with or without the
    extension (for kernels written in Triton)."""
    _cuda_lib.impl(name, checked(name, kernel), "CUDA")
