"""nriqa's one matplotlib setup: figures drawn on the Agg canvas, saved atomically.

Figures are made with :class:`matplotlib.figure.Figure`, not ``pyplot``: no global backend is
switched (a notebook keeps its own), no figure registry fills up, and drawing needs no display.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nriqa.io import atomic_write


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             dpi: float | None = None, **kwargs):
    """``(figure, axes)`` as :func:`matplotlib.pyplot.subplots` gives them, on an Agg canvas."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (PNG by default)."""
    path = Path(path)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
