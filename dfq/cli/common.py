"""Helpers shared by the command-line entry points (the only place that parses arguments)."""

from __future__ import annotations

import os

import torch

from dfq.io import write_json_atomic  # noqa: F401  (re-exported for the CLIs)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_workers() -> int:
    return min(2, os.cpu_count() or 1)


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain-text table; `columns` are (key, header) pairs; floats print with two decimals."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        return "-" if v is None else str(v)

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.ljust(w) for (_, h), w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
