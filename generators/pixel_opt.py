"""The pixel-optimization baseline (ZeroQ / DeepInversion style): a fixed set of images whose pixels are
optimized directly against the same BatchNorm-statistics losses (plus the teacher's cross-entropy), so
its quality and cost can be compared with the generator's in one harness."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from dfq.io import atomic_write, load_tensors, write_json_atomic
from dfq.models.spec import InputSpec
from dfq.modes import frozen
from generators.bn_stats import BN_LOSSES
from generators.refine import RefineConfig, optimize_logits
from generators.trainer import balanced_labels

PIXELS_FILE = "pixels.safetensors"
PIXELS_META = "pixels.json"


@dataclass(frozen=True)
class PixelOptConfig:
    """num_images are optimized in batches of batch_size for `iterations` Adam steps each."""

    num_images: int = 2048
    batch_size: int = 256
    iterations: int = 200
    lr: float = 0.1
    bn_loss: str = "kl"
    bn_weight: float = 1.0
    ce_weight: float = 1.0  # 0 gives ZeroQ's BN-only objective
    tv_weight: float = 0.0
    max_shift: int = 2
    flip: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.bn_loss not in BN_LOSSES:
            raise ValueError(f"unknown BN loss {self.bn_loss!r}; choose one of {', '.join(BN_LOSSES)}")
        if self.num_images < 1 or self.batch_size < 2 or self.iterations < 1:
            raise ValueError("num_images >= 1, batch_size >= 2 and iterations >= 1 are required")


def optimize_pixels(
    teacher: nn.Module, spec: InputSpec, config: PixelOptConfig = PixelOptConfig(), *, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Optimize images in [0, 1] (parameterized by logits) for `teacher`.

    Returns:
        (images (N, C, H, W) in [0, 1] on the CPU, labels (N,), seconds spent).
    """
    device = next(teacher.parameters()).device
    rng = torch.Generator().manual_seed(config.seed)
    labels = balanced_labels(config.num_images, spec.num_classes, rng)
    refine = RefineConfig(steps=config.iterations, lr=config.lr, bn_loss=config.bn_loss, bn_weight=config.bn_weight,
                          ce_weight=config.ce_weight, tv_weight=config.tv_weight, max_shift=config.max_shift,
                          flip=config.flip)
    images = []
    start = time.perf_counter()
    bar = tqdm(total=config.num_images, desc="pixels", unit="img", disable=not progress)
    with frozen(teacher):
        for first in range(0, config.num_images, config.batch_size):
            y = labels[first:first + config.batch_size].to(device)
            init = torch.randn(len(y), spec.channels, spec.image_size, spec.image_size, generator=rng).to(device)
            x, loss = optimize_logits(teacher, spec, init, y, refine, generator=rng)
            images.append(x.cpu())
            bar.update(len(y))
            bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    return torch.cat(images), labels, time.perf_counter() - start


def save_pixels(out_dir: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor, *, teacher: str,
                config: PixelOptConfig, seconds: float) -> Path:
    out = Path(out_dir)
    tensors = {"images": images.contiguous(), "labels": labels.contiguous()}
    atomic_write(out / PIXELS_FILE, lambda tmp: save_file(tensors, tmp))
    write_json_atomic(out / PIXELS_META, {"format": "gznq-pixels", "teacher": teacher, "seconds": seconds,
                                          "config": dataclasses.asdict(config), "num_images": len(labels)})
    return out


def load_pixels(path: str | os.PathLike, *, teacher_name: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(images in [0, 1], labels, metadata) of a saved pixel set.

    Raises:
        FileNotFoundError: not a pixel set. ValueError: made for another teacher.
    """
    path = Path(path)
    if not (path / PIXELS_META).is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a pixel-optimized set: {PIXELS_META} is missing "
                                "(make one with `train.py pixels`)")
    meta = json.loads((path / PIXELS_META).read_text())
    if teacher_name is not None and meta["teacher"] != teacher_name:
        raise ValueError(f"pixel set {str(path)!r} was optimized for {meta['teacher']!r}, not {teacher_name!r}")
    tensors = load_tensors(path / PIXELS_FILE)
    return tensors["images"], tensors["labels"], meta
