"""Can generated images tell which of several students is best on real ones? A probe, not the benchmark.

For each saved student it prints agreement with the teacher, KL(teacher || student) and logit squared error
per image on three sets: the cached calibration batches (--images), 2,048 held-out images from --source,
and cross-class blends of those (`logit_bias_probe.blends`). Compare the ranking with the students' test
drops (e.g. from `recon_probe.py`, which saved them):

    python bench/synthetic_agreement_probe.py --images runs/exp4/calib_w4_b256.pt \\
        runs/exp5/s_gen4/1 runs/exp5/s_gen4/2 runs/exp5/s_gen4/3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.logit_bias_probe import blends  # noqa: E402
from dfq.distill import kd_loss  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import load_student  # noqa: E402
from dfq.quant.serialization import read_student_meta  # noqa: E402
from dfq.sources import open_source, parse_source  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("students", nargs="+", type=Path)
    p.add_argument("--source", default="generator:runs/generator_resnet20")
    p.add_argument("--images", type=Path, required=True, help="torch file of a list of image batches")
    p.add_argument("--threads", type=int)
    return p.parse_args(argv)


@torch.no_grad()
def agreement_stats(student, teacher, batches) -> str:
    agree = kl = err = n = 0
    for x in batches:
        t, s = teacher(x), student(x)
        agree += (t.argmax(1) == s.argmax(1)).sum().item()
        kl += kd_loss(s, t, temperature=1.0).item() * len(x)
        err += (s - t).pow(2).sum().item()
        n += len(x)
    return f"agreement {100 * agree / n:.2f} KL {kl / n:.4f} logit error {err / n:.3f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = read_student_meta(args.students[0])["teacher"]
    teacher, spec = create_teacher(name)
    held_out = [x for x, _ in open_source(parse_source(args.source), teacher=teacher, teacher_name=name, spec=spec,
                                          num_images=2048, batch_size=256, seed=11)]
    sets = {"calibration": torch.load(args.images), "held-out": held_out, "blends": blends(held_out, teacher)}
    for path in args.students:
        student, _ = load_student(path)
        for label, batches in sets.items():
            print(f"{path} {label}: {agreement_stats(student, teacher, batches)}", flush=True)


if __name__ == "__main__":
    main()
