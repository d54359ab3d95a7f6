"""Figures with matplotlib on the headless Agg backend (nothing needs a display), saved atomically."""
from __future__ import annotations

from pathlib import Path

from .files import atomic_write


def pyplot():
    """matplotlib.pyplot on the headless Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | Path, dpi: int = 90) -> Path:
    """PNG written under a temporary name and renamed: never a half-written image; closes ``fig``."""
    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    return path
