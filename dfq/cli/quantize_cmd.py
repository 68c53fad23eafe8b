"""`train.py quantize`: quantize a teacher and calibrate it from a source of images; writes a student."""

from __future__ import annotations

import argparse
import time

import torch
from tqdm.auto import tqdm

from dfq.cli import distill_stage
from dfq.cli.common import default_device, default_workers, format_table, write_json_atomic
from dfq.cli.refine_args import add_refine_arguments, refine_from_args
from dfq.data import build_eval_loader
from dfq.evaluate import evaluate
from dfq.models import create_teacher
from dfq.quant import OBSERVERS, PROTOCOLS, QuantConfig, calibrate, quantize_model, save_student, summarize
from dfq.quant.recon_defaults import recon_defaults
from dfq.quant.reconstruct import ReconstructConfig, first_images, reconstruct
from dfq.sources import open_source, parse_source
from generators.augment import with_jittered_copies
from generators.refine import RefineConfig

METHODS = ("calibrate", "reconstruct", "distill")


def parse_methods(text: str) -> list[str]:
    """A comma-separated chain of methods; calibration always comes first.

    Raises:
        ValueError: an unknown method.
    """
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)} (comma-separated chain)")
    return ["calibrate"] + [m for m in methods if m != "calibrate"]


def copies_or_auto(text: str) -> int | None:
    """--recon-augment's value: a number of copies, or `auto` (None) for the setting's default."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of copies or 'auto', got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a teacher and calibrate it; writes a student directory")
    p.add_argument("--model", required=True, help="teacher name (cifar10_resnet20, tv:<name>, timm:<name>)")
    p.add_argument("--checkpoint", help="local weights file for the teacher")
    p.add_argument("--source", required=True, help="calibration images: real:DIR, generator:DIR or pixels:DIR")
    p.add_argument("--calib-images", type=int, default=2048, help="number of calibration images")
    p.add_argument("--w-bits", type=int, default=8)
    p.add_argument("--a-bits", type=int, default=8)
    p.add_argument("--protocol", default="deploy", choices=PROTOCOLS)
    p.add_argument("--method", default="calibrate",
                   help=f"one of {', '.join(METHODS)}, or a comma-separated chain; calibration always runs first")
    p.add_argument("--recon-iters", type=int, default=ReconstructConfig.iterations, help="reconstruction steps per block")
    p.add_argument("--recon-from-calib", action=argparse.BooleanOptionalAction, default=True,
                   help="reconstruct on the calibration images themselves (default; no second set to make and "
                        "refine); --no-recon-from-calib draws a separate reconstruction set")
    p.add_argument("--recon-images", type=int,
                   help="images in the reconstruction set (default: all the calibration images, or 1024 with "
                        "--no-recon-from-calib)")
    p.add_argument("--recon-drop", type=float, default=ReconstructConfig.drop_prob,
                   help="QDrop: probability that an activation skips quantization while reconstructing (0: off)")
    p.add_argument("--recon-last-block", action=argparse.BooleanOptionalAction, default=None,
                   help="reconstruct the classifier too; --no-recon-last-block leaves it as calibrated (default: "
                        "by the setting, off only for 4-bit paper students on generated images, where that "
                        "measured best)")
    p.add_argument("--recon-augment", type=copies_or_auto, default=None, metavar="K|auto",
                   help="add K randomly shifted (up to 4 pixels) and flipped copies of the reconstruction set to it "
                        "(default auto: on generated images 2 under deploy and for paper students under 5 bits, "
                        "else 0; see the README)")
    add_refine_arguments(p, steps_default=RefineConfig.steps,
                         steps_help="generator sources: refine each calibration and reconstruction batch for this "
                                    "many steps against the teacher's BN statistics (0: raw samples)")
    distill_stage.add_arguments(p)
    p.add_argument("--weight-observer", default="mse", choices=list(OBSERVERS),
                   help="range of each weight channel (default mse: the clipping that minimizes the error)")
    p.add_argument("--act-observer", default="mse", choices=list(OBSERVERS),
                   help="range of each quantized activation, from the calibration images (default mse)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="calibration batch; for generator sources also the batch refined together (its BN "
                        "statistics are matched as a whole; lower it for large inputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory for the student")
    p.add_argument("--eval-data", help="also evaluate the student beside its teacher on these real images")
    p.add_argument("--eval-limit", type=int, help="class-balanced subset size for --eval-data")
    p.add_argument("--device", default=default_device())
    p.add_argument("--workers", type=int, default=default_workers())
    p.set_defaults(func=run)


def refine_config(args, source) -> RefineConfig | None:
    """The refinement of generated batches asked for on the command line (None: none or not a generator)."""
    config = refine_from_args(args)  # validated for every source
    return config if source.kind == "generator" and config.steps > 0 else None


def _calibrate_and_reconstruct(args, methods, source, refine, student, teacher, spec) -> dict:
    """Calibrate `student` from `source` (its batches refined with `refine` when given), then reconstruct it
    when asked; returns report records."""
    def batches(num_images: int, seed: int):
        return open_source(source, teacher=teacher, teacher_name=args.model, spec=spec, num_images=num_images,
                           batch_size=args.batch_size, seed=seed, num_workers=args.workers, refine=refine)

    # built first so that a bad reconstruction option fails before any calibration work
    config = ReconstructConfig(iterations=args.recon_iters, drop_prob=args.recon_drop,
                               last_block=args.recon_last_block, seed=args.seed)
    reuse = "reconstruct" in methods and args.recon_from_calib
    if reuse and args.recon_images > args.calib_images:
        raise ValueError(f"--recon-from-calib reconstructs on calibration images: --recon-images "
                         f"({args.recon_images}) must not exceed --calib-images ({args.calib_images})")
    calib_batches = batches(args.calib_images, args.seed)
    if reuse:  # made (and refined) once, used twice
        desc = "refine" if refine is not None else "load"
        calib_batches = [x for x, _ in tqdm(calib_batches, desc=f"{desc} calibration images", leave=False)]
    calibrate(student, calib_batches, progress=True)
    if "reconstruct" not in methods:
        return {}
    if reuse:
        recon_set = first_images(calib_batches, args.recon_images)
    else:
        recon_set = [x for x, _ in batches(args.recon_images, args.seed + 1)]
    recon_set = with_jittered_copies(recon_set, args.recon_augment, seed=args.seed + 2)
    return {"reconstruct": reconstruct(student, teacher, recon_set, config, progress=True)}


def resolve_recon_options(args, methods, source) -> str:
    """Fill --recon-augment and --recon-last-block left open with the setting's defaults (`recon_defaults`);
    returns why they were chosen ("" when both were given or nothing is reconstructed).

    Raises:
        ValueError: a negative number of copies.
    """
    if args.recon_augment is not None and args.recon_augment < 0:
        raise ValueError(f"--recon-augment is a number of copies and must be >= 0, got {args.recon_augment}")
    options = recon_defaults(args.protocol, args.w_bits, args.a_bits, synthetic=source.kind != "real",
                             augment=args.recon_augment, last_block=args.recon_last_block)
    args.recon_augment, args.recon_last_block = options.augment, options.last_block
    if not options.why or "reconstruct" not in methods:
        return ""
    print(f"reconstruction: {options.augment} jittered copies, classifier "
          f"{'reconstructed' if options.last_block else 'as calibrated'} ({options.why})")
    return options.why


def run(args: argparse.Namespace) -> dict:
    """Quantize, calibrate, save; optionally evaluate. Returns the report written to OUT/report.json."""
    torch.manual_seed(args.seed)
    methods = parse_methods(args.method)
    if args.recon_images is None:
        args.recon_images = args.calib_images if args.recon_from_calib else 1024
    source = parse_source(args.source)
    refine = refine_config(args, source)
    config = QuantConfig(
        w_bits=args.w_bits, a_bits=args.a_bits, protocol=args.protocol,
        weight_observer=args.weight_observer, act_observer=args.act_observer,
    )
    auto = resolve_recon_options(args, methods, source)
    if args.resume and "distill" not in methods:
        raise ValueError("--resume continues a distillation; add distill to --method")
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint)
    teacher.to(args.device)
    start = time.perf_counter()
    student = quantize_model(teacher, config)
    records = {}
    if not args.resume:  # a resumed distillation loads the student it had reached
        records.update(_calibrate_and_reconstruct(args, methods, source, refine, student, teacher, spec))
    metadata = {
        "method": ",".join(methods), "source": str(source), "calib_images": args.calib_images, "seed": args.seed,
        "teacher_checkpoint": str(args.checkpoint) if args.checkpoint else None,
    }
    if refine is not None:
        metadata.update(refine_steps=refine.steps, refine_crop_scale=refine.crop_scale,
                        refine_ce_weight=refine.ce_weight)
    if "reconstruct" in methods:
        metadata.update(recon_images=args.recon_images, recon_iters=args.recon_iters, recon_drop=args.recon_drop,
                        recon_last_block=args.recon_last_block, recon_from_calib=args.recon_from_calib,
                        recon_augment=args.recon_augment)
        if auto:
            metadata["recon_defaults"] = auto
    if "distill" in methods:
        records.update(distill_stage.run_distill(args, student=student, teacher=teacher, spec=spec, source=source,
                                                 quant_config=config, metadata=metadata))
    metadata["seconds"] = time.perf_counter() - start
    save_student(student, args.out, config=config, teacher=args.model, metadata=metadata)
    summary = summarize(student)
    print(summary.format())
    report = {"student": str(args.out), "teacher": args.model, **metadata, "quant_config": config.to_dict(),
              "compression_ratio": summary.compression_ratio, **records}
    if args.eval_data:
        loader = build_eval_loader(args.eval_data, spec, limit=args.eval_limit, num_workers=args.workers)
        result = evaluate(student, loader, teacher=teacher, desc="student+teacher")
        evaluation = result.to_dict()
        evaluation["eval_seconds"] = evaluation.pop("seconds")  # "seconds" stays the quantization's time
        report.update(evaluation, drop=result.teacher_top1 - result.top1)
        print(format_table([report], [("top1", "top1 %"), ("teacher_top1", "teacher %"), ("drop", "drop"),
                                      ("agreement", "agree %"), ("num_images", "images")]))
    write_json_atomic(f"{args.out}/report.json", report)
    print(f"student written to {args.out}")
    return report
