"""`gznq-eval` / `python eval.py`: accuracy of a teacher (or, later, a quantized student) on real images."""

from __future__ import annotations

import argparse
import sys

import torch

from dfq.cli.common import default_device, default_workers, format_table, write_json_atomic
from dfq.data import build_eval_loader
from dfq.evaluate import evaluate
from dfq.models import create_teacher


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gznq-eval", description="Evaluate a model on real images: top-1, top-5, time.")
    p.add_argument("--model", required=True, help="teacher name: cifar10_resnet20 ..., tv:<name> or timm:<name>")
    p.add_argument("--data", required=True, help="ImageFolder directory (class subfolders) or torchvision CIFAR root")
    p.add_argument("--checkpoint", help="local weights file for the model (overrides every other source)")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--limit", type=int, help="evaluate a class-balanced subset of this many images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=default_workers(), help="data loading processes")
    p.add_argument("--device", default=default_device())
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the parsed arguments say; returns the JSON payload."""
    model, spec = create_teacher(args.model, checkpoint=args.checkpoint)
    model.to(args.device, memory_format=torch.channels_last)  # about 1.3x faster convolutions on CPU
    loader = build_eval_loader(
        args.data, spec, batch_size=args.batch_size, limit=args.limit, num_workers=args.workers
    )
    result = evaluate(model, loader, progress=not args.no_progress, desc=args.model)
    payload = {"model": args.model, "data": str(args.data), "limit": args.limit, **result.to_dict()}
    columns = [("model", "model"), ("num_images", "images"), ("top1", "top1 %"), ("top5", "top5 %"), ("seconds", "seconds")]
    print(format_table([payload], columns))
    if args.json_out:
        write_json_atomic(args.json_out, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"gznq-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
