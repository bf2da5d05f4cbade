"""What the records of benchmark and training runs share: library versions and date, and README table blocks.

Used by the quality benchmark (:mod:`sencache.quality`), ``benchmarks/e2e.py`` and the reference model's training
(:mod:`sencache.reference.train`).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

__all__ = ["fill_readme", "library_versions", "run_stamp", "table_markers"]


def library_versions() -> dict[str, str]:
    """torch, diffusers and Python versions, for the records of benchmark and training runs."""
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version()}


def run_stamp() -> dict[str, object]:
    """``{"versions": library_versions(), "date": "YYYY-MM-DD"}``: when and with what a record was made."""
    return {"versions": library_versions(), "date": time.strftime("%Y-%m-%d")}


def table_markers(name: str) -> tuple[str, str]:
    """The two README comment lines that enclose the generated table ``name`` (e.g. ``"quality"``, ``"e2e"``)."""
    return f"<!-- {name}-table:start -->", f"<!-- {name}-table:end -->"


def fill_readme(readme: str | Path, markers: tuple[str, str], table: str) -> None:
    """Replace what lies between the two ``markers`` lines of ``readme`` with ``table``."""
    text = Path(readme).read_text()
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} block to fill")
    head, rest = text.split(start, 1)
    Path(readme).write_text(head + start + "\n" + table + rest[rest.index(end):])
