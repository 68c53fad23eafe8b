"""Plots of training logs (CSV with a `step` column), so that a run can be looked at rather than read."""

from __future__ import annotations

import csv
import math
import os

from dfq.io import atomic_write

SKIPPED = ("step", "seconds", "lr")


def plot_log(csv_path: str | os.PathLike, png_path: str | os.PathLike, *, title: str = "") -> bool:
    """One small panel per logged quantity against the step, written to a PNG atomically. Returns False
    (and writes nothing) when matplotlib is missing or the log has no rows. Uses matplotlib's object
    interface, so the process's plotting backend is left alone."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    names = [k for k in rows[0] if k not in SKIPPED]
    cols = min(3, len(names)) or 1
    lines = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4 * cols, 2.6 * lines))
    FigureCanvasAgg(fig)
    axes = fig.subplots(lines, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(float(r["step"]), float(r[name])) for r in rows if r.get(name) not in ("", None)]
        if points:
            ax.plot(*zip(*points), linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    return True
