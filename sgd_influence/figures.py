"""One home for the plotting set-up: a headless pyplot and an atomic PNG save."""
from __future__ import annotations

from . import layout


def pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported on first use: drivers that
    never plot do not pay matplotlib's import time)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: str, dpi: int = 110) -> None:
    """Write `fig` as a PNG to `path` atomically and close it."""
    with layout.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
