"""How much of a reconstructed student's drop is a constant per-class logit shift? A probe, not the benchmark.

Calibrates (2,048 images) and reconstructs (1,024 images, ReconstructConfig fields from --config) a student
from --source, then on the real test set prints the student's and teacher's prediction counts per class,
the mean (student - teacher) logit per class, and top-1 after subtracting that mean shift as measured on
(a) the test set itself (an oracle: how much a perfect correction could give), (b) 1,024 real training
images and (c) 2,048 fresh images from --source (what a data-free correction could use).

    python bench/logit_bias_probe.py --bits 3 --config "iterations=500, drop_prob=0.5, last_block=False"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, parse_kwargs, preload  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, quantize_model  # noqa: E402
from dfq.quant.reconstruct import ReconstructConfig, reconstruct  # noqa: E402
from dfq.sources import open_source, parse_source  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--source", default="generator:runs/generator_resnet20")
    p.add_argument("--train-data", default=str(ASSETS / "cifar10-jpeg" / "train"))
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--protocol", default="paper")
    p.add_argument("--config", default="", help="ReconstructConfig fields, e.g. 'iterations=500, drop_prob=0.5'")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    teacher, spec = create_teacher(args.model)
    test = preload(str(ASSETS / "cifar10-jpeg" / "test"), spec)

    def images(source, n: int, seed: int) -> list[torch.Tensor]:
        return [x for x, _ in open_source(source, teacher=teacher, teacher_name=args.model, spec=spec,
                                          num_images=n, batch_size=128, seed=seed)]

    source = parse_source(args.source)
    student = quantize_model(teacher, QuantConfig(w_bits=args.bits, a_bits=args.bits, protocol=args.protocol,
                                                  weight_observer="mse", act_observer="mse"))
    calibrate(student, images(source, 2048, 0))
    reconstruct(student, teacher, images(source, 1024, 1), ReconstructConfig(**parse_kwargs(args.config)))

    @torch.no_grad()
    def shift(xs) -> torch.Tensor:
        return torch.cat([student(x) - teacher(x) for x in xs]).mean(0)

    with torch.no_grad():
        s_logits, t_logits, labels = map(torch.cat, zip(*[(student(x), teacher(x), y) for x, y in batches(test)]))
    n = spec.num_classes
    print("student predictions per class", torch.bincount(s_logits.argmax(1), minlength=n).tolist())
    print("teacher predictions per class", torch.bincount(t_logits.argmax(1), minlength=n).tolist())
    corrections = {
        "none": torch.zeros(n),
        "test-set shift (oracle)": (s_logits - t_logits).mean(0),
        "1,024 real training images": shift(images(parse_source(f"real:{args.train_data}"), 1024, 3)),
        f"2,048 images from {args.source}": shift(images(source, 2048, 7)),
    }
    teacher_top1 = (t_logits.argmax(1) == labels).float().mean().item() * 100
    for name, c in corrections.items():
        pred = (s_logits - c).argmax(1)
        top1 = (pred == labels).float().mean().item() * 100
        print(f"shift from {name}: {[round(v, 2) for v in c.tolist()]} -> top-1 {top1:.2f} "
              f"(drop {teacher_top1 - top1:.2f}), agreement {(pred == t_logits.argmax(1)).float().mean() * 100:.2f}")


if __name__ == "__main__":
    main()
