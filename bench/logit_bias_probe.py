"""How much of a student's drop is a constant per-class logit shift, and can images without real data
estimate it? A probe, not the benchmark.

With --student DIR (a saved student, e.g. from `recon_probe.py --save`) it analyses that student; otherwise
it calibrates (2,048 images) and reconstructs (1,024 images, ReconstructConfig fields from --config) one
from --source. On the real test set it prints the student's and teacher's prediction counts per class, the
mean (student - teacher) logit per class, and top-1 after subtracting that mean shift as measured on
(a) the test set itself (an oracle: how much a perfect correction could give), (b) 1,024 real training
images, and data-free estimates: (c) 2,048 images from --source (or the --images file of cached batches),
(d) blends lam * a + (1 - lam) * b of two such images of different classes, lam ~ U(0, 1), where the
teacher is unsure, and (e) the same blends, each image's shift weighted by the teacher's uncertainty
(1 - its top probability), the region where a shift flips decisions.

    python bench/logit_bias_probe.py --bits 3 --config "iterations=500, drop_prob=0.5, last_block=False"
    python bench/logit_bias_probe.py --student runs/exp5/s_gen4/1 --images runs/exp4/calib_w4_b256.pt
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
from dfq.quant import QuantConfig, calibrate, load_student, quantize_model  # noqa: E402
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
    p.add_argument("--student", type=Path, help="analyse this saved student instead of making one")
    p.add_argument("--images", type=Path, help="torch file of a list of image batches to use as (c)")
    p.add_argument("--threads", type=int)
    return p.parse_args(argv)


def blends(xs: list[torch.Tensor], teacher, seed: int = 0) -> list[torch.Tensor]:
    """Every image blended with a random other image that the teacher puts in another class."""
    g = torch.Generator().manual_seed(seed)
    images = torch.cat(xs)
    with torch.no_grad():
        labels = torch.cat([teacher(x).argmax(1) for x in xs])
    other = torch.randperm(len(images), generator=g)
    same = labels[other] == labels
    other[same] = torch.roll(other, 1)[same]  # a second chance; a few same-class pairs may remain
    lam = torch.rand(len(images), 1, 1, 1, generator=g)
    mixed = lam * images + (1 - lam) * images[other]
    return list(mixed.split(256))


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, spec = create_teacher(args.model)
    test = preload(str(ASSETS / "cifar10-jpeg" / "test"), spec)

    def images(source, n: int, seed: int) -> list[torch.Tensor]:
        return [x for x, _ in open_source(source, teacher=teacher, teacher_name=args.model, spec=spec,
                                          num_images=n, batch_size=128, seed=seed)]

    source = parse_source(args.source)
    if args.student is not None:
        student, _ = load_student(args.student)
    else:
        student = quantize_model(teacher, QuantConfig(w_bits=args.bits, a_bits=args.bits, protocol=args.protocol,
                                                      weight_observer="mse", act_observer="mse"))
        calibrate(student, images(source, 2048, 0))
        reconstruct(student, teacher, images(source, 1024, 1), ReconstructConfig(**parse_kwargs(args.config)))
    student.eval()

    @torch.no_grad()
    def shift(xs, weighted: bool = False) -> torch.Tensor:
        diffs, weights = [], []
        for x in xs:
            t = teacher(x)
            diffs.append(student(x) - t)
            weights.append(1 - t.softmax(1).amax(1) if weighted else torch.ones(len(x)))
        d, w = torch.cat(diffs), torch.cat(weights)
        return (d * w[:, None]).sum(0) / w.sum()

    with torch.no_grad():
        s_logits, t_logits, labels = map(torch.cat, zip(*[(student(x), teacher(x), y) for x, y in batches(test)]))
    n = spec.num_classes
    print("student predictions per class", torch.bincount(s_logits.argmax(1), minlength=n).tolist())
    print("teacher predictions per class", torch.bincount(t_logits.argmax(1), minlength=n).tolist())
    synthetic = torch.load(args.images) if args.images is not None else images(source, 2048, 7)
    mixed = blends(synthetic, teacher)
    corrections = {
        "none": torch.zeros(n),
        "test-set shift (oracle)": (s_logits - t_logits).mean(0),
        "1,024 real training images": shift(images(parse_source(f"real:{args.train_data}"), 1024, 3)),
        "synthetic images": shift(synthetic),
        "cross-class blends of them": shift(mixed),
        "blends, uncertainty-weighted": shift(mixed, weighted=True),
    }
    teacher_top1 = (t_logits.argmax(1) == labels).float().mean().item() * 100
    for name, c in corrections.items():
        pred = (s_logits - c).argmax(1)
        top1 = (pred == labels).float().mean().item() * 100
        print(f"shift from {name}: {[round(v, 2) for v in c.tolist()]} -> top-1 {top1:.2f} "
              f"(drop {teacher_top1 - top1:.2f}), agreement {(pred == t_logits.argmax(1)).float().mean() * 100:.2f}")


if __name__ == "__main__":
    main()
