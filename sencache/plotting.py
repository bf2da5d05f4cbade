"""matplotlib, an optional dependency (``pip install 'sencache[plots]'``) used only by the quality report and the
reference model's training record."""

from __future__ import annotations

import importlib.util
from typing import Any

INSTALL = "pip install 'sencache[plots]' (or pip install matplotlib)"


def missing_matplotlib(program: str) -> str | None:
    """The message to give when ``program`` needs matplotlib and it is not installed, else None."""
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    return f"{program} draws plots with matplotlib, which is not installed: {INSTALL}"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; a clear ImportError when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(f"the plots need matplotlib, which is not installed: {INSTALL}") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
