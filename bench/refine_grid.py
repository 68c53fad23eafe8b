"""Before and after refinement, side by side: the generator's class grid (left, one row per class) and the
same samples refined against the teacher's BN statistics (right), with the batch's BN KL and the teacher's
top-1 on the requested labels for each.

    python bench/refine_grid.py --out docs/refined_crops_resnet20.png
    python bench/refine_grid.py --crop-scale 1.0 --out docs/refined_samples_resnet20.png   # as before 2026-11-28
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dfq.io import atomic_write  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from generators.checkpoint import load_generator  # noqa: E402
from generators.grid import class_samples  # noqa: E402
from generators.network import normalize  # noqa: E402
from generators.quality import measure_quality  # noqa: E402
from generators.refine import RefineConfig, refine_images  # noqa: E402


def describe(teacher, spec, images: torch.Tensor, labels: torch.Tensor) -> str:
    report = measure_quality(teacher, [(normalize(images, spec.mean, spec.std), labels)])
    return (f"BN KL {report.bn_kl:.4f}, teacher top-1 {report.teacher_top1:.1f}, "
            f"teacher confidence {report.confidence:.3f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--generator", default="runs/generator_resnet20")
    p.add_argument("--steps", type=int, default=RefineConfig.steps)
    p.add_argument("--crop-scale", type=float, default=RefineConfig.crop_scale,
                   help="refinement starts from random resized crops covering at least this share (1: as drawn)")
    p.add_argument("--ce-weight", type=float, default=RefineConfig.ce_weight,
                   help="weight of the teacher's cross-entropy in refinement")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    teacher, spec = create_teacher(args.model)
    generator, _ = load_generator(args.generator, teacher_name=args.model, teacher=teacher)
    torch.manual_seed(0)  # the generator's sampling noise
    images, labels = class_samples(generator, per_class=args.per_class)
    config = RefineConfig(steps=args.steps, crop_scale=args.crop_scale, ce_weight=args.ce_weight)
    refined = refine_images(teacher, spec, images, labels, config, generator=torch.Generator().manual_seed(0))
    print(f"raw:     {describe(teacher, spec, images, labels)}")
    print(f"refined: {describe(teacher, spec, refined, labels)}")
    grids = [make_grid(x, nrow=args.per_class, padding=1, pad_value=1.0) for x in (images, refined)]
    spacer = torch.ones(3, grids[0].shape[1], 8)
    atomic_write(args.out, lambda tmp: save_image(torch.cat([grids[0], spacer, grids[1]], dim=2), tmp, format="png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
