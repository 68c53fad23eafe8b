"""Helpers shared by the command-line entry points (the only place that parses arguments)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

from dfq.io import write_json_atomic  # noqa: F401  (re-exported for the CLIs)


def tune_allocator() -> None:
    """Keep glibc from returning large freed blocks to the OS after every use.

    Convolution activations of a batch are tens of MB; by default glibc serves them with mmap and unmaps
    them on free, so every forward pass page-faults them in again: measured here, that is 30-40% of the
    wall time of a ResNet-20 forward at batch 256 spent in the kernel. Raising the mmap and trim
    thresholds keeps the memory in the heap for reuse. Process-wide, so only entry points call it.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 30)
        libc.mallopt(m_trim_threshold, 1 << 30)
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


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
