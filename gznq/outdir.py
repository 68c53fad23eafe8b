"""Result directories that are never half-written and never silently replaced.

A run writes into `OUT.partial` beside its final directory and renames it to `OUT` only when everything is
in it, so an interrupted or failed run leaves `OUT` as it was. `OUT.partial` survives a run only when it
holds a checkpoint a resume can use; otherwise it is removed. `OUT` is replaced only when it holds nothing
but a result of the same kind and the caller asked to overwrite it; a directory holding anything else is
never touched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path


@dataclass(frozen=True)
class ResultKind:
    """What one command writes. name: for messages. marker: the file whose presence marks a complete result.
    entries: fnmatch patterns of every name such a directory may hold (anything else makes it not ours).
    resume_file: the checkpoint that makes an interrupted OUT.partial worth keeping ("" : none)."""

    name: str
    marker: str
    entries: tuple[str, ...]
    resume_file: str = ""

    def holds_only_ours(self, path: Path) -> bool:
        names = [p.name for p in path.iterdir()]
        return self.marker in names and all(any(fnmatchcase(n, e) for e in self.entries) for n in names)


def partial_dir(out: str | os.PathLike) -> Path:
    """Where a run writing to `out` works until it is finished."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def check_output(out: str | os.PathLike, kind: ResultKind, *, overwrite: bool, resume: bool = False) -> None:
    """Refuse to write a `kind` to `out` where that would lose something, before any work is done.

    Raises:
        FileExistsError: `out` holds anything but a `kind` (never replaced), or a `kind` and `overwrite` is off;
            `OUT.partial` holds an interrupted run and neither `resume` nor `overwrite` was asked for.
        FileNotFoundError: `resume` with no interrupted run to continue.
        ValueError: `out`, its parent or `OUT.partial` is a file.
    """
    out, work = Path(out), partial_dir(out)
    for parent in (out.parent, *out.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--out {str(out)!r} lies under {str(parent)!r}, which is a file")
            break
    for path in (out, work):
        if path.exists() and not path.is_dir():
            raise ValueError(f"{str(path)!r} is a file; give --out a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not kind.holds_only_ours(out):
            raise FileExistsError(f"--out {str(out)!r} holds files that are not a {kind.name}; it is left untouched: "
                                  "pick another --out")
        if not overwrite and not resume:
            raise FileExistsError(f"--out {str(out)!r} already holds a {kind.name}; pass --overwrite to replace it "
                                  "(the new one replaces it only once it is complete) or pick another --out")
    if resume and not work.is_dir():
        raise FileNotFoundError(f"nothing to resume: {str(work)!r}, where an interrupted run keeps its "
                                "checkpoints, does not exist")
    if work.exists() and not resume and not overwrite:
        hint = "pass --resume to continue it or --overwrite to start again" if kind.resume_file else \
            "pass --overwrite to start again"
        raise FileExistsError(f"{str(work)!r} holds an interrupted run; {hint}")


@contextlib.contextmanager
def writing_output(out: str | os.PathLike, kind: ResultKind, *, resume: bool = False) -> Iterator[Path]:
    """Yield the working directory OUT.partial (kept when resuming, else made empty); on a clean exit move it
    to `out`, replacing what `out` held (checked by `check_output`); on an error or Ctrl-C remove it unless it
    holds `kind.resume_file`."""
    out, work = Path(out), partial_dir(out)
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not (kind.resume_file and (work / kind.resume_file).exists()):
            shutil.rmtree(work, ignore_errors=True)
        raise
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    if old.exists():
        shutil.rmtree(old)
