"""How sure is the teacher of refined images, and how large are its last-stage features? A probe, not the benchmark.

For each RefineConfig given (fields separated by commas, configs by semicolons), draws `--num-images` from the
generator with `--seed`, refines them in batches as `train.py quantize` does, and prints the teacher's mean
top softmax probability, the share of images below 0.9, and the mean norm of the spatially pooled output of
the teacher's last stage (`--feature-module`); `--real DIR` adds the same for a class-balanced draw of real
images:

    python bench/refine_confidence.py --real ../shared/assets/cifar10-jpeg/train \\
        --configs "ce_weight=1.0; ce_weight=0.0; crop_scale=1.0, ce_weight=1.0"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import parse_kwargs, preload  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.sources import Source, open_source  # noqa: E402
from generators.refine import RefineConfig  # noqa: E402


@torch.no_grad()
def teacher_view(teacher: torch.nn.Module, feature_module: torch.nn.Module, batches) -> dict:
    """Mean top probability, share of images below 0.9 and mean pooled-feature norm over normalized `batches`."""
    tops, norms = [], []
    handle = feature_module.register_forward_hook(lambda m, i, o: norms.append(o.flatten(2).mean(2).norm(dim=1)))
    try:
        for x in batches:
            tops.append(teacher(x).softmax(1).max(1).values)
    finally:
        handle.remove()
    top = torch.cat(tops)
    return {"confidence": top.mean().item(), "below_0.9": (top < 0.9).float().mean().item(),
            "feature_norm": torch.cat(norms).mean().item(), "images": len(top)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--generator", default="runs/generator_resnet20")
    p.add_argument("--configs", default="", help="RefineConfig fields per config, configs separated by ';'")
    p.add_argument("--num-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feature-module", default="layer3", help="teacher module whose output norm is measured")
    p.add_argument("--real", help="also measure a class-balanced draw of real images from this folder")
    args = p.parse_args(argv)
    teacher, spec = create_teacher(args.model)
    teacher.eval()
    feature_module = teacher.get_submodule(args.feature_module)
    rows = []
    if args.real:
        real = preload(args.real, spec, limit=args.num_images).tensors[0]
        rows.append(("real " + args.real, teacher_view(teacher, feature_module, real.split(args.batch_size)), 0.0))
    for text in filter(None, (c.strip() for c in args.configs.split(";"))):
        config = RefineConfig(**parse_kwargs(text))
        start = time.perf_counter()
        images = [x for x, _ in open_source(Source("generator", Path(args.generator)), teacher=teacher,
                                            teacher_name=args.model, spec=spec, num_images=args.num_images,
                                            batch_size=args.batch_size, seed=args.seed, refine=config)]
        rows.append((text, teacher_view(teacher, feature_module, images), time.perf_counter() - start))
    for name, view, seconds in rows:
        print(f"{name}: confidence {view['confidence']:.3f}, below 0.9 {view['below_0.9']:.3f}, "
              f"{args.feature_module} norm {view['feature_norm']:.2f} ({view['images']} images, {seconds:.0f} s)")


if __name__ == "__main__":
    main()
