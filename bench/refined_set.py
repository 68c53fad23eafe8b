"""Make and cache a refined synthetic set (a probe's input, not the benchmark).

Draws `num_images` from a generator with `seed`, refines them in batches as `train.py quantize` does
(`RefineConfig` defaults, except that crops are off unless `--crop-scale` asks for them: the script's
first sets were made before crops), and saves {"images": [batches], "seconds": ...} in the format of the
benchmark's --images-cache, for `bench/distill_probe.py --images/--distill-images`:

    python bench/refined_set.py --num-images 8192 --seed 5 --out runs/exp8/refined_8192_seed5.pt

`--crop-scale` starts refinement from random resized crops, `--ce-weight` weighs its class loss; `--real DIR`
saves a class-balanced draw of real images in the same format instead (a control for the probes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import preload  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.io import atomic_write  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.sources import Source, open_source  # noqa: E402
from generators.refine import RefineConfig  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--generator", default="runs/generator_resnet20")
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-scale", type=float, default=1.0,
                   help="refinement starts from random resized crops of the samples (RefineConfig.crop_scale)")
    p.add_argument("--ce-weight", type=float, default=RefineConfig.ce_weight,
                   help="weight of the teacher's cross-entropy in refinement (RefineConfig.ce_weight)")
    p.add_argument("--real", help="instead: a class-balanced draw of real images from this folder, shuffled")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    tune_allocator()
    teacher, spec = create_teacher(args.model)
    start = time.perf_counter()
    if args.real:  # the control: the same number of real images in the same format
        pool = preload(args.real, spec, limit=args.num_images).tensors[0]
        pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))]
        images = list(pool.split(args.batch_size))
    else:
        images = [x for x, _ in open_source(Source("generator", Path(args.generator)), teacher=teacher,
                                            teacher_name=args.model, spec=spec, num_images=args.num_images,
                                            batch_size=args.batch_size, seed=args.seed,
                                            refine=RefineConfig(crop_scale=args.crop_scale,
                                                                ce_weight=args.ce_weight))]
    seconds = time.perf_counter() - start
    atomic_write(Path(args.out), lambda tmp: torch.save({"images": images, "seconds": seconds}, tmp))
    print(f"{args.num_images} images in {seconds:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
