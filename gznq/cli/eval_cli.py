"""`gznq-eval` / `python eval.py`: accuracy of a teacher, or of a quantized student beside its teacher, on
real images."""

from __future__ import annotations

import argparse
import os
import sys

import torch

from dfq import distributed
from dfq.data import SPLITS, build_eval_loader
from dfq.evaluate import evaluate
from dfq.models import SpecOverrides, create_teacher
from dfq.quant import is_student_dir, load_student
from gznq.cli.common import (
    HelpFormatter,
    add_spec_arguments,
    check_writable_file,
    default_device,
    default_workers,
    error_message,
    format_table,
    positive_int,
    spec_overrides,
    tune_allocator,
    write_json_atomic,
)
from gznq.cli.launch import start_processes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gznq-eval", description="Evaluate a model on real images: top-1, top-5, time.",
                                formatter_class=HelpFormatter)
    p.add_argument("--model", help="teacher name: cifar10_resnet20 ..., tv:<name> or timm:<name> "
                                   "(optional when --checkpoint is a student directory)")
    p.add_argument("--data", help="real images: ImageFolder directory (class subfolders) or torchvision CIFAR root "
                                  "(with --generator: the reference for diversity, optional)")
    p.add_argument("--generator", help="report the quality of this generator's data for --model instead")
    p.add_argument("--onnx", help="evaluate this exported model (`train.py export`) with onnxruntime; with "
                                  "--checkpoint STUDENT_DIR, also its agreement with the fake-quantized student")
    p.add_argument("--threads", type=positive_int, help="with --onnx: onnxruntime's threads (default: all cores)")
    p.add_argument("--num-images", type=positive_int, default=2048, help="with --generator: samples to judge")
    p.add_argument("--checkpoint", help="teacher weights file, or a student directory written by `train.py quantize`")
    p.add_argument("--teacher-checkpoint", help="weights of a student's teacher (default: as recorded, else the zoo's)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a teacher checkpoint that holds pickled Python objects besides its tensors (loading "
                        "them can run code from the file: only for files you trust)")
    add_spec_arguments(p)
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    p.add_argument("--split", default="all", choices=SPLITS,
                   help="which images of --data: all, or the select / report halves (README, Results)")
    p.add_argument("--limit", type=positive_int, help="evaluate a class-balanced subset of this many images")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--workers", type=int, default=default_workers(), help="data loading processes")
    p.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def _load_models(args: argparse.Namespace):
    """(model, teacher or None, spec, name) as the arguments ask."""
    if args.checkpoint and is_student_dir(args.checkpoint):
        student, meta = load_student(args.checkpoint, device=args.device)
        name = meta["teacher"]
        if args.model and args.model != name:
            raise ValueError(f"--model {args.model} but the student at {args.checkpoint} was made from {name}")
        teacher_ckpt = args.teacher_checkpoint or meta["metadata"].get("teacher_checkpoint")
        if not spec_overrides(args).is_empty():
            raise ValueError("a student records its teacher's input spec; leave out --mean/--std/--image-size/"
                             "--num-classes with a student directory")
        teacher, spec = create_teacher(name, checkpoint=teacher_ckpt, trust_checkpoint=args.trust_checkpoint,
                                       overrides=SpecOverrides.from_dict(meta.get("input_spec")))
        return student, teacher.to(args.device), spec, f"{name} (student)"
    if not args.model:
        raise ValueError("--model is required unless --checkpoint is a student directory")
    model, spec = create_teacher(args.model, checkpoint=args.checkpoint, trust_checkpoint=args.trust_checkpoint,
                                 overrides=spec_overrides(args))
    model.to(args.device, memory_format=torch.channels_last)  # about 1.3x faster convolutions on CPU
    return model, None, spec, args.model


def run_generator_report(args: argparse.Namespace) -> dict:
    """The generator quality report: teacher top-1 on samples, BN losses, diversity, throughput."""
    from generators.checkpoint import check_generator_spec, load_generator, read_generator_meta
    from generators.quality import measure_quality, stream_throughput
    from generators.stream import SyntheticStream

    if not args.model:
        raise ValueError("--generator needs --model, the teacher to judge its samples with")
    overrides = spec_overrides(args)
    if overrides.is_empty():  # the input the generator was trained for
        overrides = SpecOverrides.from_dict(read_generator_meta(args.generator).get("input_spec"))
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint, trust_checkpoint=args.trust_checkpoint,
                                   overrides=overrides)
    teacher.to(args.device)
    generator, meta = load_generator(args.generator, teacher_name=args.model, teacher=teacher, device=args.device)
    check_generator_spec(meta, spec, path=args.generator)  # other --mean/--std than it was trained for
    stream = SyntheticStream(generator, spec.mean, spec.std, batch_size=args.batch_size, seed=12345,
                             num_batches=-(-args.num_images // args.batch_size))
    real = None
    if args.data:
        real = build_eval_loader(args.data, spec, batch_size=args.batch_size, limit=args.num_images,
                                 num_workers=args.workers)
    report = measure_quality(teacher, stream, real_batches=real)
    report.images_per_second = stream_throughput(stream)
    payload = {"model": args.model, "generator": args.generator, "data": args.data, **report.to_dict()}
    columns = [("teacher_top1", "teacher top1 %"), ("confidence", "teacher confidence"),
               ("real_confidence", "on real"), ("bn_kl", "BN KL"), ("bn_l2", "BN L2"),
               ("diversity_ratio", "feature diversity vs real"),
               ("pixel_diversity_ratio", "pixel diversity (8x8) vs real"),
               ("images_per_second", "images/s")]
    print(format_table([payload], columns))
    if args.json_out:
        write_json_atomic(args.json_out, payload)
    return payload


def run_onnx_report(args: argparse.Namespace) -> dict:
    """Top-1 of an exported model in onnxruntime; beside a student, the student's and their agreement."""
    from dfq.export.check import OnnxModule, input_spec, read_metadata

    if not args.data:
        raise ValueError("--onnx needs --data, the real images to evaluate on")
    if not os.path.isfile(args.onnx):
        raise FileNotFoundError(f"--onnx {args.onnx!r} is not a file; write one with `python train.py export`")
    if args.checkpoint and not is_student_dir(args.checkpoint):
        raise ValueError(f"with --onnx, --checkpoint must be the student directory it was exported from; "
                         f"{args.checkpoint!r} is not one")
    model, metadata = OnnxModule(args.onnx, threads=args.threads), read_metadata(args.onnx)
    spec = input_spec(args.onnx, metadata)
    student = load_student(args.checkpoint)[0] if args.checkpoint else None
    recorded = metadata.get("student")
    if student is not None and recorded and os.path.realpath(recorded) != os.path.realpath(args.checkpoint):
        print(f"note: {args.onnx} was exported from {recorded}, not {args.checkpoint}", file=sys.stderr)
    loader = build_eval_loader(args.data, spec, batch_size=args.batch_size, limit=args.limit, split=args.split,
                               num_workers=args.workers)
    result = evaluate(model, loader, teacher=student, progress=not args.no_progress, desc="onnxruntime")
    payload = {"onnx": args.onnx, "checkpoint": args.checkpoint, "data": str(args.data), "split": args.split,
               "limit": args.limit, **result.to_dict()}
    if student is not None:  # evaluate's "teacher" here is the student the file was exported from
        student_top1, student_top5 = payload.pop("teacher_top1"), payload.pop("teacher_top5")
        payload["top1_minus_student"] = -payload.pop("drop")
        for key in ("broken", "fixed", "output_kl"):  # the runtime against the student, not against a teacher
            payload[f"{key}_vs_student"] = payload.pop(key)
        payload.update(student_top1=student_top1, student_top5=student_top5)
    columns = [("onnx", "onnx"), ("num_images", "images"), ("top1", "top1 %"), ("top5", "top5 %")]
    if student is not None:
        columns += [("student_top1", "student %"), ("agreement", "agree %")]
    print(format_table([payload], columns + [("seconds", "seconds")]))
    if args.json_out:
        write_json_atomic(args.json_out, payload)
    return payload


def run(args: argparse.Namespace) -> dict:
    """Evaluate as the parsed arguments say; returns the JSON payload."""
    if args.json_out:
        check_writable_file(args.json_out)
    if args.generator and args.onnx:
        raise ValueError("give --generator or --onnx, not both")
    if distributed.is_distributed() and (args.generator or args.onnx):
        raise ValueError("under several processes eval.py evaluates a teacher or a student; run --generator and "
                         "--onnx reports as one process")
    if args.generator:
        return run_generator_report(args)
    if args.onnx:
        return run_onnx_report(args)
    if not args.data:
        raise ValueError("--data is required: the real images to evaluate on")
    model, teacher, spec, name = _load_models(args)
    loader = build_eval_loader(args.data, spec, batch_size=args.batch_size, limit=args.limit, split=args.split,
                               num_workers=args.workers)
    result = evaluate(model, loader, teacher=teacher, progress=not args.no_progress, desc=name)
    payload = {"model": name, "checkpoint": args.checkpoint, "data": str(args.data), "split": args.split,
               "limit": args.limit, **result.to_dict()}
    columns = [("model", "model"), ("num_images", "images"), ("top1", "top1 %"), ("top5", "top5 %")]
    if teacher is not None:
        columns += [("teacher_top1", "teacher %"), ("drop", "drop"), ("agreement", "agree %")]
    if distributed.is_main_process():  # every process holds the same figures; one prints and writes them
        payload["processes"] = distributed.world_size()
        print(format_table([payload], columns + [("seconds", "seconds")]))
        if args.json_out:
            write_json_atomic(args.json_out, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        device = start_processes()  # under `accelerate launch`: each process evaluates its shard of the images
        if device is not None:
            args.device = device
            args.no_progress = args.no_progress or not distributed.is_main_process()
        run(args)
    except (ValueError, OSError, RuntimeError, ImportError) as exc:
        print(f"gznq-eval: error: {error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
