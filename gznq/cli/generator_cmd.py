"""`train.py generator`, `train.py sample` and `train.py pixels`: make synthetic data for a teacher."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torchvision.utils import save_image

from dfq import distributed
from dfq.io import write_json_atomic
from dfq.models import SpecOverrides, create_teacher
from generators.bn_stats import BN_LOSSES
from generators.checkpoint import META_FILE as GENERATOR_META
from generators.checkpoint import check_teacher, load_generator, read_generator_meta
from generators.generator_refine import refined_stream
from generators.network import GeneratorConfig
from generators.pixel_opt import PIXELS_FILE, PIXELS_META, PixelOptConfig, optimize_pixels, save_pixels
from generators.stream import SyntheticStream
from generators.trainer import GeneratorTrainConfig, train_generator
from gznq.cli.common import (
    HelpFormatter,
    add_checkpoint_arguments,
    add_teacher_arguments,
    default_device,
    positive_int,
    spec_overrides,
)
from gznq.cli.refine_args import add_refine_arguments, refine_from_args
from gznq.outdir import ResultKind, check_output, writing_output

_TRAIN_DEFAULTS = GeneratorTrainConfig()
_GEN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GeneratorConfig)}
SAMPLES_META = "samples.json"
SAMPLE_DIR = ResultKind("gznq sample set", marker=SAMPLES_META, entries=(SAMPLES_META, "[0-9]*"))
PIXEL_DIR = ResultKind("gznq pixel set", marker=PIXELS_META, entries=(PIXELS_META, PIXELS_FILE))


def add_parsers(sub) -> None:
    p = sub.add_parser("generator", help="train a conditional generator on a teacher's BatchNorm statistics",
                       formatter_class=HelpFormatter)
    add_teacher_arguments(p)
    p.add_argument("--steps", type=positive_int,
                   help=f"training steps (default: {_TRAIN_DEFAULTS.steps}; with --resume: the run's own total, "
                        "or a larger total to train further)")
    p.add_argument("--batch-size", type=positive_int, default=_TRAIN_DEFAULTS.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=_TRAIN_DEFAULTS.lr, help="Adam learning rate (warm-up, then cosine)")
    p.add_argument("--bn-loss", default=_TRAIN_DEFAULTS.bn_loss, choices=list(BN_LOSSES),
                   help="BN-statistics loss: kl (GZNQ, statistics as Gaussians) or l2 (GDFQ)")
    p.add_argument("--bn-weight", type=float, default=_TRAIN_DEFAULTS.bn_weight, help="weight of the BN loss")
    p.add_argument("--diversity-weight", type=float, default=_TRAIN_DEFAULTS.diversity_weight,
                   help="weight of the mode-seeking term (different latents, different images)")
    p.add_argument("--diversity-space", default=_TRAIN_DEFAULTS.diversity_space,
                   help="where mode seeking measures the difference of two images: pooled (to 8x8), feature (the "
                        "teacher's penultimate features) or pixel (full resolution); several joined by '+' "
                        "(pooled+feature) add one term each")
    p.add_argument("--ce-weight", type=float, default=_TRAIN_DEFAULTS.ce_weight,
                   help="weight of the teacher's cross-entropy on each image's class")
    p.add_argument("--class-bn-weight", type=float, default=_TRAIN_DEFAULTS.class_bn_weight,
                   help="weight of the per-class BN loss of the first --class-bn-layers BN layers (each class "
                        "alone must have their statistics)")
    p.add_argument("--class-bn-layers", type=positive_int, default=_TRAIN_DEFAULTS.class_bn_layers,
                   help="how many of the teacher's first BN layers the per-class BN loss covers")
    p.add_argument("--info-weight", type=float, default=_TRAIN_DEFAULTS.info_weight,
                   help="weight of the latent posterior term, -log q(z | x) (generators/posterior.py)")
    p.add_argument("--input-weight", type=float, default=_TRAIN_DEFAULTS.input_weight,
                   help="weight of the input-statistics term: the normalized images' per-channel mean and variance "
                        "against the 0 and 1 the teacher's input normalization implies")
    p.add_argument("--tv-weight", type=float, default=_TRAIN_DEFAULTS.tv_weight, help="weight of total variation")
    p.add_argument("--label-smoothing", type=float, default=_TRAIN_DEFAULTS.label_smoothing, help="in [0, 1)")
    p.add_argument("--width", type=positive_int, default=_GEN_DEFAULTS["width"], help="channels of the first feature map")
    p.add_argument("--latent-dim", type=positive_int, default=_GEN_DEFAULTS["latent_dim"], help="size of z")
    p.add_argument("--seed", type=int, default=0, help="seeds the initial weights and every random draw")
    p.add_argument("--out", required=True, help="directory for checkpoints, losses.csv and sample grids")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_generator)

    p = sub.add_parser("sample", help="write generated images as an ImageFolder of PNGs", formatter_class=HelpFormatter)
    p.add_argument("--generator", required=True, help="generator directory")
    p.add_argument("--num-images", type=positive_int, required=True, help="images to write")
    p.add_argument("--out", required=True, help="directory for the images (written as OUT.partial, renamed when done)")
    p.add_argument("--overwrite", action="store_true", help="replace the sample set already in --out")
    p.add_argument("--classes", help="comma-separated class indices (default: all, balanced)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images generated (and refined) together")
    p.add_argument("--seed", type=int, default=0, help="seeds the stream and the refinement")
    add_refine_arguments(p, steps_default=0,
                         steps_help="refine each batch this many steps against the teacher's BN statistics, as "
                                    "`quantize` does (needs the teacher: its name comes from the generator, its "
                                    "weights from --checkpoint or the usual places)")
    add_checkpoint_arguments(p, "local weights file for the teacher (only with --refine-steps)")
    p.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N")
    p.set_defaults(func=run_sample)

    p = sub.add_parser("pixels", help="baseline: optimize a fixed set of images directly on the BN losses",
                       formatter_class=HelpFormatter)
    add_teacher_arguments(p)
    p.add_argument("--num-images", type=positive_int, default=2048, help="images to optimize")
    p.add_argument("--iterations", type=positive_int, default=PixelOptConfig.iterations, help="Adam steps per batch")
    p.add_argument("--batch-size", type=positive_int, default=PixelOptConfig.batch_size,
                   help="images optimized together (their BN statistics are matched as a whole)")
    p.add_argument("--bn-loss", default="kl", choices=list(BN_LOSSES), help="BN-statistics loss")
    p.add_argument("--ce-weight", type=float, default=PixelOptConfig.ce_weight,
                   help="weight of the teacher's cross-entropy (0: ZeroQ's BN-only objective)")
    p.add_argument("--seed", type=int, default=0, help="seeds the labels, the start and the jitter")
    p.add_argument("--out", required=True, help="directory for the pixel set")
    p.add_argument("--overwrite", action="store_true", help="replace the pixel set already in --out")
    p.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:N")
    p.set_defaults(func=run_pixels)


def run_generator(args: argparse.Namespace) -> None:
    config = GeneratorTrainConfig(
        steps=args.steps or _TRAIN_DEFAULTS.steps, batch_size=args.batch_size, lr=args.lr, bn_loss=args.bn_loss,
        bn_weight=args.bn_weight, diversity_weight=args.diversity_weight, diversity_space=args.diversity_space,
        ce_weight=args.ce_weight, class_bn_weight=args.class_bn_weight, class_bn_layers=args.class_bn_layers,
        info_weight=args.info_weight, input_weight=args.input_weight, tv_weight=args.tv_weight,
        label_smoothing=args.label_smoothing, seed=args.seed,
    )
    overrides = spec_overrides(args)
    if args.resume and overrides.is_empty() and (Path(args.out) / GENERATOR_META).is_file():
        overrides = SpecOverrides.from_dict(read_generator_meta(args.out).get("input_spec"))  # as it was started
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint, trust_checkpoint=args.trust_checkpoint,
                                   overrides=overrides)
    teacher.to(args.device, memory_format=torch.channels_last)
    gen_config = GeneratorConfig(num_classes=spec.num_classes, image_size=spec.image_size, width=args.width,
                                 latent_dim=args.latent_dim, channels=spec.channels)
    train_generator(teacher, spec, args.out, teacher_name=args.model, gen_config=gen_config, config=config,
                    resume=args.resume, steps=args.steps if args.resume else None, progress=not args.no_progress)
    if distributed.is_main_process():
        print(f"generator written to {args.out} (samples.png, losses.csv, losses.png)")


def run_sample(args: argparse.Namespace) -> None:
    check_output(args.out, SAMPLE_DIR, overwrite=args.overwrite)
    generator, meta = load_generator(args.generator, device=args.device)
    classes = [int(c) for c in args.classes.split(",")] if args.classes else None
    batch = min(args.batch_size, args.num_images)
    stream = SyntheticStream(generator, meta["input_spec"]["mean"], meta["input_spec"]["std"], batch_size=batch,
                             classes=classes, seed=args.seed, num_batches=-(-args.num_images // batch),
                             normalized=False)
    refine = refine_from_args(args)
    if refine.steps:
        teacher, spec = create_teacher(meta["teacher"], checkpoint=args.checkpoint,
                                       trust_checkpoint=args.trust_checkpoint,
                                       overrides=SpecOverrides.from_dict(meta.get("input_spec")))
        teacher.to(args.device)
        check_teacher(meta, teacher=teacher, path=args.generator)  # refuses other weights
        stream = refined_stream(stream, teacher, spec, refine, seed=args.seed, normalized=False)
    digits = len(str(generator.config.num_classes - 1))
    written = 0
    try:
        with writing_output(args.out, SAMPLE_DIR) as work:
            for images, labels in stream:
                for image, label in zip(images, labels):
                    if written == args.num_images:
                        break
                    folder = work / f"{int(label):0{digits}d}"
                    folder.mkdir(parents=True, exist_ok=True)
                    save_image(image, folder / f"{written:07d}.png")
                    written += 1
            write_json_atomic(work / SAMPLES_META, {"generator": str(args.generator), "teacher": meta["teacher"],
                                                    "num_images": written, "seed": args.seed, "classes": classes,
                                                    "refine": dataclasses.asdict(refine)})
    except KeyboardInterrupt:
        print(f"\ninterrupted after {written} images; nothing was kept and {args.out} is unchanged")
        raise
    print(f"wrote {written} images to {args.out}")


def run_pixels(args: argparse.Namespace) -> None:
    check_output(args.out, PIXEL_DIR, overwrite=args.overwrite)
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint, trust_checkpoint=args.trust_checkpoint,
                                   overrides=spec_overrides(args))
    teacher.to(args.device, memory_format=torch.channels_last)
    config = PixelOptConfig(num_images=args.num_images, iterations=args.iterations, batch_size=args.batch_size,
                            bn_loss=args.bn_loss, ce_weight=args.ce_weight, seed=args.seed)
    try:
        images, labels, seconds = optimize_pixels(teacher, spec, config)
    except KeyboardInterrupt:
        print(f"\ninterrupted; nothing was kept and {args.out} is unchanged")
        raise
    with writing_output(args.out, PIXEL_DIR) as work:
        save_pixels(work, images, labels, teacher=args.model, config=config, seconds=seconds)
    print(f"{len(labels)} pixel-optimized images written to {args.out} in {seconds:.0f} s")
