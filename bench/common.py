"""Shared by the benchmark scripts: cached real-image tensors and result tables."""

from __future__ import annotations

import ast
import json
import os
import platform
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from dfq.data import load_dataset, stratified_indices
from dfq.models.spec import InputSpec

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"


def preload(path: str | os.PathLike, spec: InputSpec, *, limit: int | None = None, workers: int = 2) -> TensorDataset:
    """Decode and preprocess a folder once into memory (10,000 CIFAR images are 123 MB), so each of many
    evaluations costs forward passes only."""
    ds = load_dataset(path, spec)
    if limit is not None and limit < len(ds):
        ds = Subset(ds, stratified_indices(ds.dataset.targets if isinstance(ds, Subset) else ds.targets, limit))
    xs, ys = [], []
    for x, y in DataLoader(ds, batch_size=500, num_workers=workers):
        xs.append(x)
        ys.append(y)
    return TensorDataset(torch.cat(xs), torch.cat(ys))


def batches(ds: TensorDataset, batch_size: int = 500) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def cell(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse_kwargs(text: str) -> dict:
    """'iterations=500, mix=0.5' -> {'iterations': 500, 'mix': 0.5}: keyword literals, as probes take
    config fields on the command line."""
    call = ast.parse(f"dict({text})", mode="eval").body
    if call.args:
        raise ValueError(f"expected name=value pairs, got {text!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def read_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a bench/dfq_bench.py results.json; rows written before rows carried their seed ran with
    seed 0 and get it."""
    return [{"seed": 0, **r} for r in json.loads(Path(path).read_text())["rows"]]
