"""Shared by the benchmark scripts: where the assets are, the machine, result tables."""

from __future__ import annotations

import json
import os
import platform
import shlex
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


def short_name(model: str) -> str:
    return model.removeprefix("cifar10_").replace(":", "_").replace("/", "_")


def default_pixels(model: str) -> str:
    return f"runs/pixels_{short_name(model)}"


def pixel_set_of(row: dict) -> str | None:
    """The pixel set a row calibrated on, as a normalized path (None for other methods). Rows written before
    the field existed name it only in their command (`--pixels DIR`, or the default `runs/pixels_<model>`)."""
    if row.get("method") != "pixels":
        return None
    path = row.get("pixels")
    if path is None:
        words = shlex.split(row.get("command", ""))
        path = words[words.index("--pixels") + 1] if "--pixels" in words[:-1] else default_pixels(row["model"])
    return os.path.normpath(path)
