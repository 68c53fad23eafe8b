"""Probe: what the strided sample of the MSE/percentile observers (before commit 032d398) cost, against the
uniform random sample since, on real-data calibration alone (ResNet-20, MSE observers).

    python -m bench.observer_fix_probe --out runs/observer_fix.json

  ceilings  2,048 real training images in batches of 256, four settings, seeds 0-2, the report split
  guard     the accuracy guard's calibration (512 images in batches of 256, W4A4 deploy), seeds 0-1, the
            first 2,000 images of the select split

The strided sample is the old `_SampleObserver` put back for the run; its finding is written down in
docs/benchmarks.md ("The observer fix"), after which this probe leaves bench/ (git keeps it).
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.common import ASSETS
from dfq.io import write_json_atomic
from dfq.models import create_teacher
from dfq.quant import QuantConfig
from dfq.quant import observers
from gznq.pipeline import PipelineConfig, run_pipeline

FIXED = (observers._SampleObserver.reset, observers._SampleObserver.collect, observers._SampleObserver.samples)


def _strided_reset(self):
    self._chunks, self._count = [], 0


def _strided_collect(self, x):  # the code of before 032d398
    rows = self._rows(x.detach().float())
    budget = max(self.max_samples // 8, 1)
    rows = rows[:, ::max(rows.shape[1] // budget, 1)]
    self._chunks.append(rows)
    self._count += rows.shape[1]
    while self._count > self.max_samples and len(self._chunks) > 1:
        self._chunks = [c[:, ::2] for c in self._chunks]
        self._count = sum(c.shape[1] for c in self._chunks)


def _strided_samples(self):
    if not self._chunks:
        raise self._not_ready()
    return torch.cat(self._chunks, dim=1)


STRIDED = (_strided_reset, _strided_collect, _strided_samples)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    data = ASSETS / "cifar10-jpeg"
    teacher = create_teacher("cifar10_resnet20")
    runs = [("ceilings", bits, protocol, seed, 2048, "report", None)
            for seed in (0, 1, 2) for bits, protocol in ((4, "paper"), (3, "paper"), (5, "paper"), (4, "deploy"))]
    runs += [("guard", 4, "deploy", seed, 512, "select", 2000) for seed in (0, 1)]
    rows = []
    for part, bits, protocol, seed, images, split, limit in runs:
        for name, methods in (("fixed", FIXED), ("strided", STRIDED)):
            observers._SampleObserver.reset, observers._SampleObserver.collect, observers._SampleObserver.samples = methods
            config = PipelineConfig(
                source=f"real:{data / 'train'}", calib_images=images, seed=seed, eval_data=str(data / "test"),
                eval_split=split, eval_limit=limit, progress=False, workers=1,
                quant=QuantConfig(w_bits=bits, a_bits=bits, protocol=protocol, weight_observer="mse", act_observer="mse"))
            report = run_pipeline(config, teacher=teacher).report
            rows.append({"part": part, "observer": name, "setting": f"W{bits}A{bits}:{protocol}", "seed": seed,
                         "top1": report["top1"], "drop": report["drop"], "agreement": report["agreement"]})
            print(json.dumps(rows[-1]), flush=True)
    observers._SampleObserver.reset, observers._SampleObserver.collect, observers._SampleObserver.samples = FIXED
    write_json_atomic(args.out, {"rows": rows})


if __name__ == "__main__":
    main()
