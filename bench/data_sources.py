"""Generated vs pixel-optimized vs real calibration data, side by side.

Trains a generator (or reuses --generator), optimizes a pixel set (or reuses --pixels), then for each
source: its quality (teacher top-1 on its images, BN losses, within-class diversity against real images),
the time it took to make, and the top-1 of students calibrated on it (deploy protocol by default),
evaluated on the full real test set beside the teacher.

    python bench/data_sources.py --out runs/bench_data_sources

Writes results.json and results.md to --out. A benchmark, not a test: it takes the better part of an hour.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, machine, markdown_table, preload  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.io import write_json_atomic  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, quantize_model  # noqa: E402
from dfq.sources import Source, open_source  # noqa: E402
from generators.checkpoint import META_FILE, load_generator  # noqa: E402
from generators.pixel_opt import PIXELS_META, PixelOptConfig, optimize_pixels, save_pixels  # noqa: E402
from generators.quality import measure_quality, stream_throughput  # noqa: E402
from generators.stream import SyntheticStream  # noqa: E402
from generators.trainer import GeneratorTrainConfig, train_generator  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--train-data", default=str(ASSETS / "cifar10-jpeg" / "train"))
    p.add_argument("--test-data", default=str(ASSETS / "cifar10-jpeg" / "test"))
    p.add_argument("--generator", default="runs/generator_resnet20", help="trained here if it does not exist")
    p.add_argument("--gen-steps", type=int, default=GeneratorTrainConfig.steps)
    p.add_argument("--pixels", default="runs/pixels_resnet20", help="optimized here if it does not exist")
    p.add_argument("--pixel-iterations", type=int, default=PixelOptConfig.iterations)
    p.add_argument("--calib-images", type=int, default=2048)
    p.add_argument("--bits", default="6,4")
    p.add_argument("--protocol", default="deploy")
    p.add_argument("--observer", default="minmax")
    p.add_argument("--limit", type=int, help="evaluate on a class-balanced subset (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_data_sources")
    return p.parse_args(argv)


def make_sources(args, teacher, spec) -> dict[str, float]:
    """Create the generator and pixel set if missing; return the seconds each source took to make."""
    gen_dir, px_dir = Path(args.generator), Path(args.pixels)
    if not (gen_dir / META_FILE).exists():
        train_generator(teacher, spec, gen_dir, teacher_name=args.model,
                        config=GeneratorTrainConfig(steps=args.gen_steps, seed=args.seed))
    if not (px_dir / PIXELS_META).exists():
        config = PixelOptConfig(num_images=args.calib_images, iterations=args.pixel_iterations, seed=args.seed)
        images, labels, seconds = optimize_pixels(teacher, spec, config)
        save_pixels(px_dir, images, labels, teacher=args.model, config=config, seconds=seconds)
    gen_meta = json.loads((gen_dir / META_FILE).read_text())
    px_meta = json.loads((px_dir / PIXELS_META).read_text())
    return {"generator": gen_meta["record"]["seconds"], "pixels": px_meta["seconds"], "real": 0.0}


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    torch.manual_seed(args.seed)
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint)
    make_seconds = make_sources(args, teacher, spec)
    test = preload(args.test_data, spec, limit=args.limit)
    sources = {"generator": Source("generator", Path(args.generator)), "pixels": Source("pixels", Path(args.pixels)),
               "real": Source("real", Path(args.train_data))}

    def source_batches(kind):
        return open_source(sources[kind], teacher=teacher, teacher_name=args.model, spec=spec,
                           num_images=args.calib_images, batch_size=128, seed=args.seed)

    real_reference = list(source_batches("real"))
    quality = {}
    for kind in sources:
        report = measure_quality(teacher, real_reference if kind == "real" else source_batches(kind),
                                 real_batches=real_reference)
        if kind == "generator":
            generator, _ = load_generator(args.generator, teacher_name=args.model, teacher=teacher)
            report.images_per_second = stream_throughput(SyntheticStream(generator, spec.mean, spec.std, batch_size=256))
        quality[kind] = report.to_dict()
        print(kind, {k: round(v, 3) if isinstance(v, float) else v for k, v in quality[kind].items()}, flush=True)

    teacher_top1 = evaluate(teacher, batches(test), progress=False).top1
    rows = []
    for bits in (int(b) for b in args.bits.split(",")):
        for kind in sources:
            config = QuantConfig(w_bits=bits, a_bits=bits, protocol=args.protocol, weight_observer=args.observer,
                                 act_observer=args.observer)
            start = time.perf_counter()
            student = quantize_model(teacher, config)
            calibrate(student, source_batches(kind))
            calib_seconds = time.perf_counter() - start
            r = evaluate(student, batches(test), teacher=teacher, progress=False)
            rows.append({"source": kind, "bits": f"W{bits}A{bits}", "protocol": args.protocol, "top1": r.top1,
                         "drop": teacher_top1 - r.top1, "agreement": r.agreement,
                         "make_seconds": make_seconds[kind], "calib_seconds": calib_seconds,
                         "teacher_top1_on_data": quality[kind]["teacher_top1"],
                         "diversity_ratio": quality[kind]["diversity_ratio"],
                         "pixel_diversity_ratio": quality[kind]["pixel_diversity_ratio"], "bn_kl": quality[kind]["bn_kl"]})
            print(rows[-1], flush=True)
    out = Path(args.out)
    write_json_atomic(out / "results.json", {"args": vars(args), "machine": machine(), "teacher_top1": teacher_top1,
                                             "quality": quality, "rows": rows})
    table = markdown_table(rows, [("source", "source"), ("bits", "bits"), ("top1", "top-1"), ("drop", "drop"),
                                  ("agreement", "agreement"), ("make_seconds", "s to make"),
                                  ("calib_seconds", "s to calibrate"), ("teacher_top1_on_data", "teacher top-1 on data"),
                                  ("diversity_ratio", "feature diversity vs real"),
                                  ("pixel_diversity_ratio", "pixel diversity vs real"), ("bn_kl", "BN KL")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
