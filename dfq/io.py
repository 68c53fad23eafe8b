"""Atomic file writes shared by everything that saves state (students, generators, reports)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` for a temporary file beside `path`, then rename it onto `path`, so a reader
    never sees a half-written file and an interrupted write leaves the old file intact. The file gets the
    permissions a plain open() would give it (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike, payload: dict) -> None:
    """Write `payload` as indented JSON, atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def load_tensors(path: str | os.PathLike, *, device: str = "cpu", unset: tuple[str, ...] = ()) -> dict:
    """The tensors of a safetensors file, all finite.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not readable safetensors (truncated, corrupt, another format), or holds NaN or
            inf values (but in tensors whose names end with one of `unset`: NaN there marks "not set yet");
            the message names the file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist")
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error type, and OSError for some damage
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc}); it may "
                         "be truncated or damaged: make it again") from None
    check_finite(tensors, where=str(path), unset=unset)
    return tensors


def check_finite(tensors: dict, *, where: str, unset: tuple[str, ...] = ()) -> None:
    """Refuse floating-point tensors holding NaN or inf, naming them and `where` they are; tensors whose names
    end with one of `unset` are skipped (NaN there marks a value not set yet).

    Raises:
        ValueError: some tensor is not finite.
    """
    import torch

    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in tensors.items()
           if v.is_floating_point() and not k.endswith(unset) and not torch.isfinite(v).all()}
    if bad:
        names = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:6])
        raise ValueError(f"{where} holds non-finite values (NaN or inf) in {len(bad)} tensors: {names}")


def truncate_log(path: str | os.PathLike, last_step: int, columns: list[str] | None = None) -> list[str]:
    """Keep the header and the rows of a CSV log whose `step` is at most `last_step`, atomically (a run
    resumed from the checkpoint of that step logs the later ones again); returns the header as it was. With
    `columns`, a log written with fewer columns (by an earlier version) is rewritten with these, its rows
    left empty where it had no value.

    Raises:
        ValueError: the file has no `step` column, or columns that `columns` lacks.
    """
    import csv

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "step" not in rows[0]:
        raise ValueError(f"{str(path)!r} is not a log with a step column")
    header = rows[0]
    at = header.index("step")
    kept = [r for r in rows[1:] if int(r[at]) <= last_step]
    if columns is not None and header != columns:
        extra = [c for c in header if c not in columns]
        if extra:
            raise ValueError(f"{str(path)!r} has columns {extra} that this run does not log; it is not this run's log")
        kept = [[dict(zip(header, r)).get(c, "") for c in columns] for r in kept]
    kept = [columns if columns is not None else header] + kept

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    atomic_write(path, write)
    return header
