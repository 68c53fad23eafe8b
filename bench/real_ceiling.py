"""Real-data calibration ceiling: top-1, drop and agreement for every bit width, protocol and observer,
calibrated on real training images (calibration alone) and evaluated on one half of the real test set.

    python -m bench.real_ceiling --split report --out runs/bench_real_ceiling

Every row is a `gznq.run_pipeline` run; rows go to OUT/results.json and OUT/results.md. A benchmark, not a
test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import ASSETS, machine, markdown_table
from dfq.io import write_json_atomic
from dfq.models import create_teacher
from dfq.quant import QuantConfig
from gznq.cli.common import tune_allocator
from gznq.pipeline import PipelineConfig, run_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, choices=("select", "report"), help="which half of the test set")
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--train-data", default=str(ASSETS / "cifar10-jpeg" / "train"))
    p.add_argument("--test-data", default=str(ASSETS / "cifar10-jpeg" / "test"))
    p.add_argument("--calib-images", type=int, default=2048)
    p.add_argument("--bits", default="8,6,5,4,3", help="comma-separated; W and A take the same bits")
    p.add_argument("--protocols", default="deploy,paper")
    p.add_argument("--observers", default="minmax,mse", help="used for weights and activations alike")
    p.add_argument("--limit", type=int, help="evaluate a class-balanced subset of the split (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    teacher = create_teacher(args.model, checkpoint=args.checkpoint)
    rows = []
    for protocol in args.protocols.split(","):
        for observer in args.observers.split(","):
            for bits in (int(b) for b in args.bits.split(",")):
                quant = QuantConfig(w_bits=bits, a_bits=bits, protocol=protocol, weight_observer=observer,
                                    act_observer=observer)
                config = PipelineConfig(source=f"real:{args.train_data}", model=args.model, checkpoint=args.checkpoint,
                                        quant=quant, calib_images=args.calib_images, seed=args.seed,
                                        eval_data=args.test_data, eval_split=args.split, eval_limit=args.limit,
                                        progress=False)
                r = run_pipeline(config, teacher=teacher).report
                row = {"protocol": protocol, "observer": observer, "bits": f"W{bits}A{bits}", "split": args.split,
                       "seed": args.seed, "top1": r["top1"], "teacher_top1": r["teacher_top1"], "drop": r["drop"],
                       "agreement": r["agreement"], "calib_seconds": r["seconds"], "num_images": r["num_images"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    write_json_atomic(out / "results.json", {"args": vars(args), "machine": machine(), "rows": rows})
    table = markdown_table(rows, [("protocol", "protocol"), ("observer", "observer"), ("bits", "bits"),
                                  ("top1", "top-1"), ("drop", "drop"), ("agreement", "agreement"),
                                  ("calib_seconds", "calib s")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
