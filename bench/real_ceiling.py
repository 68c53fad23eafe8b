"""Real-data calibration ceiling: top-1 and drop against the teacher for every bit width, protocol and
observer, calibrated on real training images and evaluated on the full real test set.

    python bench/real_ceiling.py --out runs/bench_real_ceiling

Writes results.json and results.md to --out. This is a benchmark, not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, machine, markdown_table, preload  # noqa: E402
from gznq.cli.common import tune_allocator  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.io import write_json_atomic  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, quantize_model  # noqa: E402
from gznq.sources import real_calibration_loader  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--train-data", default=str(ASSETS / "cifar10-jpeg" / "train"))
    p.add_argument("--test-data", default=str(ASSETS / "cifar10-jpeg" / "test"))
    p.add_argument("--calib-images", type=int, default=1024)
    p.add_argument("--bits", default="8,6,5,4,3", help="comma-separated; W and A take the same bits")
    p.add_argument("--protocols", default="deploy,paper")
    p.add_argument("--observers", default="minmax,mse", help="used for weights and activations alike")
    p.add_argument("--limit", type=int, help="evaluate a class-balanced subset (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_real_ceiling")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    torch.manual_seed(args.seed)
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint)
    test = preload(args.test_data, spec, limit=args.limit)
    calib = list(real_calibration_loader(args.train_data, spec, num_images=args.calib_images, seed=args.seed))
    teacher_result = evaluate(teacher, batches(test), progress=False)
    print(f"teacher {args.model}: top-1 {teacher_result.top1:.2f} on {teacher_result.num_images} images")
    rows = []
    for protocol in args.protocols.split(","):
        for observer in args.observers.split(","):
            for bits in (int(b) for b in args.bits.split(",")):
                config = QuantConfig(w_bits=bits, a_bits=bits, protocol=protocol,
                                     weight_observer=observer, act_observer=observer)
                start = time.perf_counter()
                student = quantize_model(teacher, config)
                calibrate(student, calib)
                calib_seconds = time.perf_counter() - start
                r = evaluate(student, batches(test), teacher=teacher, progress=False)
                row = {"protocol": protocol, "observer": observer, "bits": f"W{bits}A{bits}", "top1": r.top1,
                       "teacher_top1": r.teacher_top1, "drop": r.teacher_top1 - r.top1, "agreement": r.agreement,
                       "calib_seconds": calib_seconds, "num_images": r.num_images}
                rows.append(row)
                print(f"{protocol:6s} {observer:6s} W{bits}A{bits}: top-1 {r.top1:.2f} drop {row['drop']:.2f} "
                      f"agree {r.agreement:.2f} ({calib_seconds:.1f}s quantize+calibrate)", flush=True)
    out = Path(args.out)
    write_json_atomic(out / "results.json", {"args": vars(args), "machine": machine(),
                                             "teacher_top1": teacher_result.top1, "rows": rows})
    table = markdown_table(rows, [("protocol", "protocol"), ("observer", "observer"), ("bits", "bits"),
                                  ("top1", "top-1"), ("drop", "drop"), ("agreement", "agreement"),
                                  ("calib_seconds", "calib s")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
