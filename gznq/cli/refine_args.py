"""The refinement options shared by `train.py quantize` and `train.py sample`: one definition, one reading."""

from __future__ import annotations

import argparse

from generators.refine import PRECISIONS, SPACES, RefineConfig


def add_refine_arguments(p: argparse.ArgumentParser, *, steps_default: int | None, steps_help: str) -> None:
    """--refine-steps (with the command's own default and help), --refine-crop-scale, --refine-ce-weight,
    --refine-precision, --refine-space and --refine-weight-lr."""
    p.add_argument("--refine-steps", type=int, default=steps_default, help=steps_help)
    p.add_argument("--refine-crop-scale", type=float, default=RefineConfig.crop_scale,
                   help="start refinement from random resized crops of the samples covering at least this share "
                        "of each (1: the samples as drawn)")
    p.add_argument("--refine-ce-weight", type=float, default=RefineConfig.ce_weight,
                   help="weight of the teacher's cross-entropy on each sample's class during refinement (0: the "
                        "BN statistics alone, which leaves the teacher as unsure of some images as of real ones)")
    p.add_argument("--refine-precision", choices=list(PRECISIONS), default=RefineConfig.precision,
                   help="run the teacher's passes during refinement under autocast to this type (bfloat16: faster "
                        "on CPUs with AMX or AVX-512 BF16 and on GPUs with native bfloat16, slower on other CPUs; "
                        "statistics and pixels stay float32)")
    p.add_argument("--refine-space", choices=list(SPACES), default=RefineConfig.space,
                   help="what refinement optimizes: each image's pixels, or each batch's latents and a copy of the "
                        "generator's weights (a generator source only; the crop scale then does not apply)")
    p.add_argument("--refine-weight-lr", type=float, default=RefineConfig.weight_lr,
                   help="with --refine-space generator: Adam rate of the generator copy's weights (0: the latents "
                        "alone)")


def refine_from_args(args: argparse.Namespace) -> RefineConfig:
    """The RefineConfig the options ask for (validated, whether or not it is used)."""
    return RefineConfig(steps=args.refine_steps, crop_scale=args.refine_crop_scale, ce_weight=args.refine_ce_weight,
                        precision=args.refine_precision, space=args.refine_space, weight_lr=args.refine_weight_lr)
