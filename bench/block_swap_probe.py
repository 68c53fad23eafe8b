"""Which blocks does reconstruction on generated images get wrong? A probe, not the benchmark.

Takes two saved students of the same teacher and config (e.g. `recon_probe.py --save`), one reconstructed
on generated images (--student) and one on real images (--reference), and evaluates on the real test set
the student with one block at a time taken from the reference (its weights, rounding and activation
steps): the top-1 each swap gains is how much that block's reconstruction on generated images costs.

With --steps-only it swaps only activation step sizes instead: all of them, those of the last stage and
the classifier, and the classifier's alone.

    python bench/block_swap_probe.py --student runs/exp5/s_gen4/2 --reference runs/exp5/s_real/1
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, preload  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import load_student  # noqa: E402
from dfq.quant.reconstruct import find_blocks  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--limit", type=int, help="class-balanced test subset (default: the full test set)")
    p.add_argument("--threads", type=int)
    p.add_argument("--steps-only", action="store_true", help="swap activation step sizes, not whole blocks")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    student, meta = load_student(args.student)
    reference, ref_meta = load_student(args.reference)
    if meta["teacher"] != ref_meta["teacher"] or meta["quant_config"] != ref_meta["quant_config"]:
        raise ValueError("the two students differ in teacher or quantization config; swapping blocks needs both equal")
    teacher, spec = create_teacher(meta["teacher"])
    test = batches(preload(str(ASSETS / "cifar10-jpeg" / "test"), spec, limit=args.limit))

    def report(name: str, model) -> float:
        r = evaluate(model, test, teacher=teacher, progress=False)
        print(f"{name}: top1 {r.top1:.2f} drop {r.teacher_top1 - r.top1:.2f} agreement {r.agreement:.2f}", flush=True)
        return r.top1

    base = report("student", student)
    report("reference", reference)
    if args.steps_only:
        blocks = find_blocks(student)
        classifier, stage = blocks[-1], blocks[-2].rsplit(".", 1)[0]  # e.g. "linear", "layer3"
        groups = {"all": lambda n: True, f"{stage} and {classifier}": lambda n: n.startswith((stage, classifier)),
                  classifier: lambda n: n == classifier}
        ref = dict(reference.named_modules())
        for label, chosen in groups.items():
            hybrid = copy.deepcopy(student)
            with torch.no_grad():
                for name, m in hybrid.named_modules():
                    if getattr(m, "input_quantizer", None) is not None and chosen(name):
                        m.input_quantizer.scale.copy_(ref[name].input_quantizer.scale)
            report(f"student with the reference's activation steps ({label})", hybrid)
        return
    for block in find_blocks(student):
        hybrid = copy.deepcopy(student)
        hybrid.get_submodule(block).load_state_dict(reference.get_submodule(block).state_dict())
        top1 = report(f"student with the reference's {block}", hybrid)
        print(f"  gain {top1 - base:+.2f}", flush=True)


if __name__ == "__main__":
    main()
