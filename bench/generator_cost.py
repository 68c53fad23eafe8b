"""What a generator design costs on this machine: stream throughput (inference, batch 256) and training
throughput (forward + backward of the generator alone, batch 128), for our design and its variants, beside
a GDFQ-style generator (z -> 128x8x8, two upsample + 3x3 conv stages at 128 channels, 3x3 head).

    python bench/generator_cost.py --out runs/bench_generator_cost
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, markdown_table  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.io import write_json_atomic  # noqa: E402
from generators.network import ConditionalGenerator, GeneratorConfig  # noqa: E402


class GDFQStyleGenerator(nn.Module):
    """The generator layout of GDFQ's public code, rebuilt from its description for timing only."""

    def __init__(self, num_classes: int = 10, latent_dim: int = 100) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.l1 = nn.Linear(latent_dim, 128 * 8 * 8)
        self.body = nn.Sequential(
            nn.BatchNorm2d(128), nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2), nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, padding=1), nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2), nn.Conv2d(64, 3, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(3, affine=False),
        )
        self.latent_dim = latent_dim

    def forward(self, z, y):
        return self.body(self.l1(z * self.embed(y)).view(-1, 128, 8, 8))


def _throughput(model: nn.Module, latent_dim: int, *, batch: int, train: bool, seconds: float = 4.0) -> float:
    z, y = torch.randn(batch, latent_dim), torch.randint(0, 10, (batch,))
    model.train(train)
    ctx = torch.enable_grad() if train else torch.no_grad()
    with ctx:
        (model(z, y).mean().backward() if train else model(z, y))
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            out = model(z, y)
            if train:
                out.mean().backward()
            n += batch
    return n / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_generator_cost")
    args = p.parse_args(argv)
    tune_allocator()
    torch.manual_seed(0)
    designs = {
        "gznq default (nearest, width 64)": GeneratorConfig(num_classes=10),
        "nearest, width 128": GeneratorConfig(num_classes=10, width=128),
        "transpose, width 64": GeneratorConfig(num_classes=10, upsample="transpose"),
        "transpose, width 128": GeneratorConfig(num_classes=10, upsample="transpose", width=128),
    }
    rows = []
    for name, cfg in designs.items():
        model = ConditionalGenerator(cfg)
        rows.append({"design": name, "params": sum(p.numel() for p in model.parameters()),
                     "stream": _throughput(model, cfg.latent_dim, batch=256, train=False),
                     "train": _throughput(model, cfg.latent_dim, batch=128, train=True)})
        print(rows[-1], flush=True)
    gdfq = GDFQStyleGenerator()
    rows.append({"design": "GDFQ-style", "params": sum(p.numel() for p in gdfq.parameters()),
                 "stream": _throughput(gdfq, 100, batch=256, train=False),
                 "train": _throughput(gdfq, 100, batch=128, train=True)})
    print(rows[-1])
    out = Path(args.out)
    write_json_atomic(out / "results.json", {"machine": machine(), "rows": rows})
    table = markdown_table(rows, [("design", "design"), ("params", "params"), ("stream", "stream img/s (b256)"),
                                  ("train", "train img/s (b128)")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
