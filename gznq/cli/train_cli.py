"""`gznq-train` / `python train.py`: the pipeline's producing steps as subcommands.

    generator  train a conditional generator on a teacher's BatchNorm statistics (once per model)
    sample     write generated images as an ImageFolder of PNGs
    pixels     baseline: optimize a fixed image set directly on the BN losses
    quantize   quantize a teacher and calibrate it from real:, generator: or pixels: images
    export     write a saved deploy student as a QDQ ONNX model that onnxruntime runs with integer kernels
"""

from __future__ import annotations

import argparse
import sys

from gznq.cli import export_cmd, generator_cmd, quantize_cmd
from gznq.cli.common import error_message, tune_allocator
from gznq.cli.launch import start_processes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gznq-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    generator_cmd.add_parsers(sub)
    quantize_cmd.add_parser(sub)
    export_cmd.add_parser(sub)
    return parser


# Commands that run as several processes under `accelerate launch` / torchrun (the others refuse to).
PARALLEL_COMMANDS = ("generator", "quantize")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        device = start_processes()
        if device is not None:
            if args.command not in PARALLEL_COMMANDS:
                raise ValueError(f"`{args.command}` runs as one process; under accelerate launch only "
                                 f"{', '.join(PARALLEL_COMMANDS)} runs as several")
            args.device = device
        args.func(args)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:  # OSError: FileNotFoundError, FileExistsError, ...
        print(f"gznq-train {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
