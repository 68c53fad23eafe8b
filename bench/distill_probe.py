"""Does distillation help after reconstruction? A probe, not the benchmark.

Calibrates (MSE) and reconstructs a student from the generator (ReconstructConfig defaults, 1,024 images;
cached in --cache), then distills it with the generator in the loop, evaluating on a class-balanced
subset of the real test set every 200 steps.

    python bench/distill_probe.py --generator runs/generator_resnet20 --bits 4 --protocol paper \\
        --config "dict(steps=600, temperature=4.0, mix_fraction=0.5, generator_every=4, lr=5e-5)"

With --images FILE (a refined calibration set cached by `dfq_bench.py --images-cache`), the start is the
benchmark's pipeline instead: calibrated on those images and reconstructed on them with the options the
setting chooses (`recon_defaults`); `--data images` then distills on that same set (each batch drawn at
random, shifted and flipped; labels: the teacher's) instead of the generator's raw samples, or on
`--distill-images`, changed further by `--variant` and `--lowpass` (bench/distill_data.py).
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, parse_kwargs, preload  # noqa: E402
from bench.distill_data import adversarial_batches, jittered_batches, lowpass, strong_batches  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.distill import Distiller, DistillConfig, run_distillation  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, load_student, quantize_model, save_student  # noqa: E402
from dfq.quant.recon_defaults import recon_defaults  # noqa: E402
from dfq.quant.reconstruct import ReconstructConfig, reconstruct  # noqa: E402
from dfq.sources import Source, open_source  # noqa: E402
from generators.augment import with_jittered_copies  # noqa: E402
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
    p.add_argument("--images", help="refined calibration set (a dfq_bench --images-cache file) to start from")
    p.add_argument("--data", default="generator", choices=["generator", "images"],
                   help="what the student is distilled on (images: the --images set, jittered)")
    p.add_argument("--distill-images", help="with --data images: distill on this cached set instead of --images")
    p.add_argument("--variant", default="jitter", choices=["jitter", "strong", "adversarial"],
                   help="with --data images: how batches are changed after jitter (bench/distill_data.py)")
    p.add_argument("--adversarial", default="steps=3, eps=0.3, share=0.5",
                   help="with --variant adversarial: its settings")
    p.add_argument("--lowpass", type=float, help="with --data images: low-pass the set first (sigma, share of Nyquist)")
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
    images = torch.load(args.images)["images"] if args.images else None
    tag = Path(args.images).stem if args.images else Path(args.generator).name
    cache = Path(args.cache) / f"{tag}_w{args.bits}_{args.protocol}"
    if (cache / "student.json").exists():
        student, _ = load_student(cache)
    else:
        config = QuantConfig(w_bits=args.bits, a_bits=args.bits, protocol=args.protocol,
                             act_observer="mse", weight_observer="mse")
        student = quantize_model(teacher, config)
        if images is None:
            source = Source("generator", Path(args.generator))
            recon_set = [x for x, _ in open_source(source, teacher=teacher, teacher_name=args.model, spec=spec,
                                                   num_images=1024, batch_size=128)]
            calibrate(student, recon_set)
            recon_config = ReconstructConfig()
        else:  # as dfq_bench --recon-from-calib with the options chosen by the setting, seed 0
            calibrate(student, images)
            options = recon_defaults(args.protocol, args.bits, args.bits)
            recon_set = with_jittered_copies(images, options.augment, seed=2)
            recon_config = ReconstructConfig(last_block=options.last_block)
        reconstruct(student, teacher, recon_set, recon_config)
        save_student(student, cache, config=config, teacher=args.model)

    def report(tag) -> None:
        r = evaluate(student, batches(test), teacher=teacher, progress=False)
        print(tag, "top1", r.top1, "drop", round(r.teacher_top1 - r.top1, 2), "agreement", r.agreement, flush=True)

    report("start")
    config = DistillConfig(**_dict_literal(args.config))
    if args.data == "images":
        if images is None:
            raise SystemExit("--data images needs --images FILE")
        data = torch.load(args.distill_images)["images"] if args.distill_images else images
        if args.lowpass:
            data = [lowpass(x, args.lowpass) for x in data]
        if args.variant == "strong":
            stream = strong_batches(data, teacher, config.batch_size, config.seed)
        elif args.variant == "adversarial":
            stream = adversarial_batches(data, teacher, student, config.batch_size, config.seed,
                                         **parse_kwargs(args.adversarial))
        else:
            stream = jittered_batches(data, teacher, config.batch_size, config.seed)
        distiller = Distiller(student, teacher, spec, config, batches=stream)
    else:
        generator, _ = load_generator(args.generator, teacher=teacher)
        distiller = Distiller(student, teacher, spec, config, generator=generator)
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
