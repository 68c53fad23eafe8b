"""Shared by the benchmark scripts: where the assets are, the machine, result tables."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a results.json written by a benchmark script."""
    return json.loads(Path(path).read_text())["rows"]
