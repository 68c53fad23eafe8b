"""`train.py quantize`: its options, read once into a PipelineConfig, and `gznq.run_pipeline`."""

from __future__ import annotations

import argparse

from dfq import distributed
from dfq.data import SPLITS
from dfq.quant import OBSERVERS, PROTOCOLS, QuantConfig, summarize
from dfq.quant.reconstruct import ReconstructConfig
from generators.refine import RefineConfig
from gznq.cli.common import (
    HelpFormatter,
    add_teacher_arguments,
    bits,
    default_device,
    default_workers,
    format_table,
    positive_int,
    spec_overrides,
)
from gznq.cli.refine_args import add_refine_arguments, refine_from_args
from gznq.distill import DistillConfig, gdfq_recipe
from gznq.distill_stage import STATE_FILE
from gznq.outdir import partial_dir
from gznq.pipeline import METHODS, PipelineConfig, run_pipeline

RECIPES = ("gznq", "gdfq")


def copies_or_auto(text: str) -> int | None:
    """--recon-augment's value: a number of copies, or `auto` (None) for the setting's default."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of copies or 'auto', got {text!r}") from None


def parse_methods(text: str) -> tuple[str, ...]:
    """A comma-separated chain of methods; calibration always comes first."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)} "
                                         "(comma-separated chain)")
    return tuple(methods)


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a teacher, calibrate (reconstruct, distill) it; writes a student",
                       formatter_class=HelpFormatter)
    add_teacher_arguments(p)
    p.add_argument("--source", required=True,
                   help="calibration images: real:DIR, generator:DIR, pixels:DIR, or noise (refined from noise: "
                        "the no-generator control)")
    p.add_argument("--out", required=True, help="student directory (written as OUT.partial, renamed when done)")
    p.add_argument("--overwrite", action="store_true", help="replace the student already in --out (once the new "
                                                            "one is complete), or discard an interrupted OUT.partial")
    p.add_argument("--calib-images", type=positive_int, default=2048, help="number of calibration images")
    p.add_argument("--w-bits", type=bits, default=8, help="weight bits, 2-8")
    p.add_argument("--a-bits", type=bits, default=8, help="activation bits, 2-8")
    p.add_argument("--protocol", default="deploy", choices=PROTOCOLS,
                   help="paper: as the GDFQ-lineage tables quantize; deploy: what a device runs (README)")
    p.add_argument("--method", type=parse_methods, default="calibrate",
                   help=f"one of {', '.join(METHODS)}, or a comma-separated chain; calibration always runs first")
    p.add_argument("--weight-observer", default="mse", choices=list(OBSERVERS), help="range of each weight channel")
    p.add_argument("--act-observer", default="mse", choices=list(OBSERVERS),
                   help="range of each quantized activation, from the calibration images")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="calibration batch; for generator sources also the batch refined together (its BN "
                        "statistics are matched as a whole; lower it for large inputs)")
    r = ReconstructConfig()
    p.add_argument("--recon-iters", type=positive_int, default=r.iterations, help="reconstruction steps per block")
    p.add_argument("--recon-from-calib", action=argparse.BooleanOptionalAction, default=True,
                   help="reconstruct on the calibration images themselves; --no-recon-from-calib draws a separate set")
    p.add_argument("--recon-images", type=positive_int,
                   help="images in the reconstruction set (default: all the calibration images, or 1024 with "
                        "--no-recon-from-calib)")
    p.add_argument("--recon-drop", type=float, default=r.drop_prob,
                   help="QDrop: probability in [0, 1) that an activation skips quantization while reconstructing")
    p.add_argument("--recon-memory-mb", type=float, default=r.memory_mb,
                   help="most memory a block's held inputs and targets may take; beyond it the block trains on pools "
                        "of images drawn afresh (ImageNet-size models)")
    p.add_argument("--recon-last-block", action=argparse.BooleanOptionalAction, default=None,
                   help="reconstruct the classifier too; --no-recon-last-block leaves it as calibrated (default: by "
                        "the setting, dfq/quant/recon_defaults.py)")
    p.add_argument("--recon-augment", type=copies_or_auto, default=None, metavar="K|auto",
                   help="add K randomly shifted (up to 4 pixels) and flipped copies of the reconstruction set to it "
                        "(default auto: by the setting, dfq/quant/recon_defaults.py)")
    add_refine_arguments(p, steps_default=RefineConfig.steps,
                         steps_help="generator sources: refine each calibration and reconstruction batch for this "
                                    "many steps against the teacher's BN statistics (0: raw samples; default: by "
                                    "the setting, 50 at 3 bits or fewer, 64 at 4 bits, 10 at 5 and more)")
    d = DistillConfig()
    p.add_argument("--recipe", default="gznq", choices=RECIPES,
                   help="distillation recipe: ours (gznq) or the published GDFQ hyperparameters (gdfq)")
    p.add_argument("--distill-steps", type=positive_int, default=d.steps, help="distillation steps")
    p.add_argument("--distill-batch-size", type=positive_int, default=d.batch_size, help="images per step")
    p.add_argument("--distill-lr", type=float, default=d.lr, help="learning rate of the student's weights (>= 0)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="temperature of the KL (> 0)")
    p.add_argument("--mix-fraction", type=float, default=d.mix_fraction,
                   help="share in [0, 1] of each student batch replaced by blends of two images")
    p.add_argument("--adversarial-weight", type=float, default=d.adversarial_weight,
                   help="weight (>= 0) of the generator's push toward images where student and teacher disagree")
    p.add_argument("--generator-every", type=int, default=d.generator_every,
                   help="update the generator every N student steps (0: frozen generator)")
    p.add_argument("--distill-weight-scales", action=argparse.BooleanOptionalAction, default=None,
                   help="learn the weight step sizes too (default: only without reconstruction, whose rounding of "
                        "each weight holds for its grid alone)")
    p.add_argument("--save-every", type=positive_int, default=200, help="distillation checkpoint interval in steps")
    p.add_argument("--resume", action="store_true", help="continue the distillation interrupted in OUT.partial")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds every random draw of the run (the observers' samples keep their own seed, 0)")
    p.add_argument("--eval-data", help="also evaluate the student beside its teacher on these real images")
    p.add_argument("--eval-split", default="all", choices=SPLITS,
                   help="which images of --eval-data: all, or the select / report halves (README, Results)")
    p.add_argument("--eval-limit", type=positive_int, help="class-balanced subset of that many images")
    p.add_argument("--image-cache", help="directory that keeps (refined) calibration sets for later runs")
    p.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=default_workers(), help="data loading processes")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The PipelineConfig the options ask for (every value is validated here, before any work)."""
    if args.recipe == "gdfq":
        distill = gdfq_recipe(args.distill_steps, batch_size=args.distill_batch_size, seed=args.seed)
    else:
        distill = DistillConfig(steps=args.distill_steps, batch_size=args.distill_batch_size, lr=args.distill_lr,
                                temperature=args.temperature, adversarial_weight=args.adversarial_weight,
                                generator_every=args.generator_every, mix_fraction=args.mix_fraction,
                                weight_scales=args.distill_weight_scales, seed=args.seed)
    return PipelineConfig(
        source=args.source, model=args.model, checkpoint=args.checkpoint, trust_checkpoint=args.trust_checkpoint,
        spec_overrides=spec_overrides(args),
        quant=QuantConfig(w_bits=args.w_bits, a_bits=args.a_bits, protocol=args.protocol,
                          weight_observer=args.weight_observer, act_observer=args.act_observer),
        methods=args.method, calib_images=args.calib_images, batch_size=args.batch_size,
        refine=refine_from_args(args),
        recon=ReconstructConfig(iterations=args.recon_iters, drop_prob=args.recon_drop,
                                last_block=args.recon_last_block, memory_mb=args.recon_memory_mb, seed=args.seed),
        recon_images=args.recon_images, recon_from_calib=args.recon_from_calib, recon_augment=args.recon_augment,
        distill=distill, seed=args.seed, eval_data=args.eval_data, eval_split=args.eval_split,
        eval_limit=args.eval_limit, out=args.out, overwrite=args.overwrite, resume=args.resume,
        save_every=args.save_every, image_cache=args.image_cache, device=args.device, workers=args.workers,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> dict:
    """Run the pipeline the options describe, print its summary; returns the report."""
    config = pipeline_config(args)
    try:
        result = run_pipeline(config)
    except KeyboardInterrupt:
        work = partial_dir(args.out)
        if (work / STATE_FILE).exists():
            print(f"\ninterrupted: {args.out} is unchanged; the distillation checkpoint and a student that "
                  f"evaluates are kept in {work} (continue with the same command and --resume)")
        else:
            print(f"\ninterrupted before anything could be kept; {args.out} is unchanged")
        raise
    report = result.report
    if not distributed.is_main_process():  # several processes: the main one reports
        return report
    if report.get("recon_defaults"):
        print(f"reconstruction: {report['recon_augment']} jittered copies, classifier "
              f"{'reconstructed' if report['recon_last_block'] else 'as calibrated'} ({report['recon_defaults']})")
    print(summarize(result.student).format())
    if "top1" in report:
        print(format_table([report], [("top1", "top1 %"), ("teacher_top1", "teacher %"), ("drop", "drop"),
                                      ("agreement", "agree %"), ("num_images", "images"), ("eval_split", "split")]))
    print(f"student written to {args.out}")
    return report
