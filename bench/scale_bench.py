"""Seconds per step and peak memory of every stage at ImageNet size, as the pipeline runs them.

    OMP_NUM_THREADS=1 python -m bench.scale_bench --model tv:resnet18 --out runs/scale_resnet18

Each stage runs a few steps of its default configuration (batch sizes as shipped) on a teacher with random
weights (`--pretrained` loads its published ones where they can be found: the cost does not depend on them):
generator training, refinement of generated batches, calibration with the MSE observers, block reconstruction
(memory bounded by `--recon-memory-mb`), distillation with the generator in the loop, evaluation. The peak
resident memory of the process (on a GPU: its peak allocated memory) is read after each stage (it only grows),
so each figure is the peak up to and including that stage. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, markdown_table
from dfq.io import write_json_atomic
from dfq.models import SpecOverrides, create_teacher
from dfq.quant import QuantConfig, calibrate, quantize_model
from dfq.quant.reconstruct import ReconstructConfig, reconstruct
from generators import GeneratorTrainConfig, train_generator
from generators.checkpoint import load_generator
from generators.refine import RefineConfig
from gznq.distill import DistillConfig, Distiller
from gznq.sources import image_set, parse_source


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes); on a GPU, the
    peak of its allocated memory instead."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tv:resnet18")
    p.add_argument("--pretrained", action="store_true", help="load the published weights (default: random ones)")
    p.add_argument("--num-classes", type=int, help="classifier width (default: the model's own)")
    p.add_argument("--images", type=int, default=64, help="calibration / reconstruction images")
    p.add_argument("--steps", type=int, default=3, help="steps timed per stage (generator, refinement, distillation)")
    p.add_argument("--recon-iters", type=int, default=20, help="reconstruction iterations per block")
    p.add_argument("--recon-memory-mb", type=float, default=ReconstructConfig.memory_mb)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    overrides = SpecOverrides(num_classes=args.num_classes)
    teacher, spec = create_teacher(args.model, pretrained=args.pretrained, overrides=overrides)
    teacher.to(args.device)
    rows = []

    def record(stage: str, seconds: float, steps: int, unit: str, batch: int) -> None:
        rows.append({"stage": stage, "seconds": seconds, "steps": steps, "seconds_per_step": seconds / steps,
                     "unit": unit, "batch": batch, "peak_mb": peak_mb()})
        print(f"{stage}: {seconds / steps:.2f} s per {unit} (batch {batch}), peak {peak_mb():.0f} MiB", flush=True)

    work = Path(tempfile.mkdtemp())
    gen_config = GeneratorTrainConfig(steps=args.steps)
    start = time.perf_counter()
    train_generator(teacher, spec, work / "gen", teacher_name=args.model, config=gen_config, progress=False)
    record("generator training", time.perf_counter() - start, args.steps, "step", gen_config.batch_size)

    refine = RefineConfig(steps=args.steps)
    batch = 256 if args.images >= 256 else args.images
    images, seconds, _ = image_set(parse_source(f"generator:{work / 'gen'}"), teacher=teacher, teacher_name=args.model,
                                   spec=spec, num_images=args.images, batch_size=batch, seed=0, refine=refine)
    record("refinement", seconds, args.steps * len(images), "step of one batch", batch)

    student = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="deploy", weight_observer="mse",
                                                  act_observer="mse"))
    start = time.perf_counter()
    calibrate(student, images)
    record("calibration (MSE observers)", time.perf_counter() - start, len(images), "batch", batch)

    config = ReconstructConfig(iterations=args.recon_iters, memory_mb=args.recon_memory_mb)
    start = time.perf_counter()
    blocks = reconstruct(student, teacher, images, config)
    record("reconstruction", time.perf_counter() - start, args.recon_iters * len(blocks),
           f"iteration of one block ({len(blocks)} blocks)", config.batch_size)
    pooled = [b["block"] for b in blocks if b.get("pool", args.images) < args.images]

    generator, _ = load_generator(work / "gen", device=args.device)
    distill = DistillConfig(steps=args.steps)
    distiller = Distiller(student, teacher, spec, distill, generator=generator)
    start = time.perf_counter()
    for _ in range(args.steps):
        distiller.step()
    record("distillation (generator in the loop)", time.perf_counter() - start, args.steps, "step", distill.batch_size)

    from dfq.evaluate import evaluate

    student.eval()
    start = time.perf_counter()
    evaluate(student, [(x, torch.zeros(len(x), dtype=torch.long)) for x in images], teacher=teacher)
    record("evaluation (student + teacher)", time.perf_counter() - start, args.images, "image", batch)

    out = Path(args.out)
    payload = {"model": args.model, "device": args.device, "image_size": spec.image_size, "pretrained": args.pretrained,
               "images": args.images, "recon_memory_mb": args.recon_memory_mb, "pooled_blocks": pooled,
               "machine": machine(), "threads": torch.get_num_threads(), "rows": rows}
    write_json_atomic(out / "results.json", payload)
    table = markdown_table(rows, [("stage", "stage"), ("batch", "batch"), ("seconds_per_step", "s per step"),
                                  ("unit", "step"), ("peak_mb", "peak MiB so far")])
    (out / "results.md").write_text(f"{args.model} at {spec.image_size}, {machine()}, {torch.get_num_threads()} "
                                    f"threads; reconstruction pooled {len(pooled)} blocks\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
