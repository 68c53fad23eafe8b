"""Result directories that are never half-written and never silently replaced.

A run writes into `OUT.partial` beside its final directory and renames it to `OUT` only when everything is
in it, so an interrupted run leaves `OUT` as it was (and its checkpoints in `OUT.partial`, for `--resume`).
`OUT` is replaced only when it holds a result of the same kind and the caller asked to overwrite it; a
directory holding anything else is never touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a run writing to `out` works until it is finished."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def check_output(out: str | os.PathLike, *, kind: str, is_ours: Callable[[Path], bool], overwrite: bool,
                 resume: bool = False) -> None:
    """Refuse to write a `kind` to `out` where that would lose something, before any work is done.

    Raises:
        FileExistsError: `out` holds something that is not a `kind` (never replaced), or a `kind` and
            `overwrite` is off; `OUT.partial` holds an interrupted run and neither `resume` nor `overwrite`
            was asked for.
        FileNotFoundError: `resume` with no interrupted run to continue.
        ValueError: `out` is a file.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        if not is_ours(out):
            raise FileExistsError(f"--out {str(out)!r} is not empty and does not hold a {kind}; it is left "
                                  "untouched: pick another --out")
        if not overwrite and not resume:
            raise FileExistsError(f"--out {str(out)!r} already holds a {kind}; pass --overwrite to replace it "
                                  "(the new one replaces it only once it is complete) or pick another --out")
    work = partial_dir(out)
    if resume and not work.is_dir():
        raise FileNotFoundError(f"nothing to resume: {str(work)!r}, where an interrupted run keeps its "
                                "checkpoints, does not exist")
    if work.exists() and not resume and not overwrite:
        raise FileExistsError(f"{str(work)!r} holds an interrupted run; pass --resume to continue it or "
                              "--overwrite to start again")


def start_output(out: str | os.PathLike, *, resume: bool = False) -> Path:
    """The working directory of a run writing to `out`: `OUT.partial`, kept when resuming, else made empty."""
    work = partial_dir(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def publish_output(work: Path, out: str | os.PathLike) -> Path:
    """Move the finished working directory to `out`, replacing what `out` held (checked by `check_output`)."""
    out = Path(out)
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    if old.exists():
        shutil.rmtree(old)
    return out
