"""Plot styling shared by the chapters (kept out of the numerical modules).

Call :func:`use_book_style` once at the top of a chapter (in a ``remove-cell``). It never selects
a matplotlib backend: notebooks keep the inline backend so figures reach the book.
"""

from __future__ import annotations

__all__ = ["PALETTE", "use_book_style"]

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


def use_book_style() -> None:
    """Set the book's matplotlib defaults (size, fonts, grid, colour cycle)."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update({
        "figure.figsize": (7.0, 3.6),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": cycler(color=PALETTE),
        "font.size": 10,
        "legend.frameon": False,
        "figure.constrained_layout.use": True,
    })
