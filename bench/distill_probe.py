"""Does distillation help after reconstruction? A probe, not the benchmark.

Calibrates (MSE) and reconstructs a student from the generator (ReconstructConfig defaults, 1,024 images;
cached in --cache), then distills it with the generator in the loop, evaluating on a class-balanced
subset of the real test set every 200 steps.

    python bench/distill_probe.py --generator runs/generator_resnet20 --bits 4 --protocol paper \\
        --config "dict(steps=600, temperature=4.0, mix_fraction=0.5, generator_every=4, lr=5e-5)"
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, preload  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.distill import Distiller, DistillConfig, run_distillation  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, load_student, quantize_model, save_student  # noqa: E402
from dfq.quant.reconstruct import ReconstructConfig, reconstruct  # noqa: E402
from dfq.sources import Source, open_source  # noqa: E402
from generators.checkpoint import load_generator  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--generator", default="runs/generator_resnet20")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--protocol", default="paper")
    p.add_argument("--config", default="dict()", help="DistillConfig fields as a Python dict literal")
    p.add_argument("--limit", type=int, default=2000, help="class-balanced test subset")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--cache", default="runs/probe_reconstructed", help="where the reconstructed start is kept")
    return p.parse_args(argv)


def _dict_literal(text: str) -> dict:
    tree = ast.parse(text, mode="eval").body
    if not (isinstance(tree, ast.Call) and getattr(tree.func, "id", None) == "dict" and not tree.args):
        raise ValueError(f"--config must look like dict(steps=600, temperature=4.0), got {text!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords}


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    teacher, spec = create_teacher(args.model)
    test = preload(str(ASSETS / "cifar10-jpeg" / "test"), spec, limit=args.limit)
    cache = Path(args.cache) / f"{Path(args.generator).name}_w{args.bits}_{args.protocol}"
    if (cache / "student.json").exists():
        student, _ = load_student(cache)
    else:
        config = QuantConfig(w_bits=args.bits, a_bits=args.bits, protocol=args.protocol,
                             act_observer="mse", weight_observer="mse")
        source = Source("generator", Path(args.generator))
        images = [x for x, _ in open_source(source, teacher=teacher, teacher_name=args.model, spec=spec,
                                            num_images=1024, batch_size=128)]
        student = quantize_model(teacher, config)
        calibrate(student, images)
        reconstruct(student, teacher, images, ReconstructConfig())
        save_student(student, cache, config=config, teacher=args.model)

    def report(tag) -> None:
        r = evaluate(student, batches(test), teacher=teacher, progress=False)
        print(tag, "top1", r.top1, "drop", round(r.teacher_top1 - r.top1, 2), "agreement", r.agreement, flush=True)

    report("start")
    generator, _ = load_generator(args.generator, teacher=teacher)
    distiller = Distiller(student, teacher, spec, DistillConfig(**_dict_literal(args.config)), generator=generator)
    start = time.time()

    def on_log(step, parts, seconds):
        if step % 100 == 0:
            print(step, {k: round(v, 4) for k, v in parts.items()}, round(seconds, 1), flush=True)
        if step % args.eval_every == 0:
            report(f"step {step}")

    run_distillation(distiller, on_log=on_log, log_every=10, progress=False)
    report(f"final after {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
