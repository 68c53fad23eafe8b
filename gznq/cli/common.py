"""Helpers shared by the command-line entry points (the only place that parses arguments)."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

from dfq.io import write_json_atomic  # noqa: F401  (re-exported for the CLIs)
from dfq.quant.primitives import MAX_BITS, MIN_BITS
from gznq.pipeline import default_device  # noqa: F401  (re-exported for the CLIs)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default, and descriptions keep their line breaks."""


def bits(text: str) -> int:
    """A bit width option: an integer from 2 to 8."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer number of bits, got {text!r}") from None
    if not MIN_BITS <= value <= MAX_BITS:
        raise argparse.ArgumentTypeError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_teacher_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--model, --checkpoint and --trust-checkpoint: which teacher, from which weights; and its input spec."""
    p.add_argument("--model", required=required,
                   help="teacher name: cifar10_resnet{20,32,44,56,110}, tv:<torchvision model> or timm:<timm model>")
    add_checkpoint_arguments(p, "local weights file for the teacher: a state dict, or a dict holding one under "
                                "state_dict/model/net/ema, as a PyTorch or .safetensors file (default: the "
                                "published weights)")
    add_spec_arguments(p)


def channel_values(text: str) -> tuple[float, ...]:
    """--mean / --std: comma-separated numbers, one per input channel (0.4914,0.4822,0.4465)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.5,0.5,0.5, got {text!r}") from None
    if not all(abs(v) < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """--mean, --std, --image-size, --num-classes: what the teacher's weights were trained with, where it differs
    from the model's defaults. Recorded with generators and students, so later commands need not repeat them."""
    g = p.add_argument_group("teacher input (default: the model's own; recorded for later commands)")
    g.add_argument("--mean", type=channel_values, help="per-channel mean the weights were trained with, on [0, 1] "
                                                       "pixels, comma-separated (e.g. 0.4914,0.4822,0.4465)")
    g.add_argument("--std", type=channel_values, help="per-channel std, comma-separated (e.g. 0.2470,0.2435,0.2616)")
    g.add_argument("--image-size", type=positive_int, help="side of the square input the weights were trained at")
    g.add_argument("--num-classes", type=positive_int, help="number of classes (the classifier is built with as "
                                                            "many outputs; needs --checkpoint)")


def spec_overrides(args: argparse.Namespace):
    """The SpecOverrides the --mean/--std/--image-size/--num-classes options give (empty when none is given)."""
    from dfq.models import SpecOverrides

    return SpecOverrides(image_size=getattr(args, "image_size", None), mean=getattr(args, "mean", None),
                         std=getattr(args, "std", None), num_classes=getattr(args, "num_classes", None))


def add_checkpoint_arguments(p: argparse.ArgumentParser, help: str) -> None:
    """--checkpoint (with the command's own help) and --trust-checkpoint."""
    p.add_argument("--checkpoint", help=help)
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that holds pickled Python objects besides its tensors (loading them can "
                        "run code from the file: only for files you trust)")


def check_writable_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file that cannot be written: a directory, or under a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory; give a file name for the output")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{str(path)!r} lies under {str(parent)!r}, which is a file")
            break


def error_message(exc: BaseException) -> str:
    """The message of an error for the command line: the last line of an error raised in a data-loading worker
    (whose message carries the worker's whole traceback), else the error's own message."""
    text = str(exc)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].split(": ", 1)[-1] if lines else text
    return text


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
