"""How good is a generator's data? Teacher accuracy on its samples, BN-statistics losses, within-class
diversity of teacher features and of pixels (against real images), and stream throughput.

Both diversity figures are reported because either alone misleads: feature distance can stay high while
images of one class look alike (small pixel changes that move the features), and pixel distance can stay
high for noise the teacher does not see. Pixel diversity is measured on images average-pooled to 8 x 8
(`pixel_size`), so that per-pixel noise, which the teacher hardly sees, cannot count as variety."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dfq.modes import frozen
from generators.bn_stats import BNStatsRecorder, bn_kl_loss, bn_l2_loss
from generators.stream import SyntheticStream

PIXEL_SIZE = 8  # side to which images are average-pooled for the pixel-diversity figure


@contextlib.contextmanager
def capture_penultimate(model: nn.Module, *, detach: bool = True):
    """Within the block, `features[-1]` holds the input of the model's last Linear layer for the latest
    forward pass (the penultimate features), detached unless `detach=False`. The hook is removed on exit."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer whose input could serve as features")
    features: list[torch.Tensor] = []
    def record(module, inputs):
        f = inputs[0].flatten(1)
        features.append(f.detach() if detach else f)

    handle = linears[-1].register_forward_pre_hook(record)
    try:
        yield features
    finally:
        handle.remove()


def within_class_distance(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between features of the same class, averaged over classes."""
    per_class = []
    for c in labels.unique():
        f = features[labels == c]
        if len(f) < 2:
            continue
        d = torch.cdist(f, f)
        n = len(f)
        per_class.append(d.sum().item() / (n * (n - 1)))
    if not per_class:
        raise ValueError("need at least two images of some class to measure diversity")
    return sum(per_class) / len(per_class)


@dataclass
class QualityReport:
    teacher_top1: float  # % of images the teacher assigns to their label
    bn_kl: float
    bn_l2: float
    diversity: float  # within-class mean pairwise distance of teacher penultimate features
    real_diversity: float | None  # the same on real images, when given
    num_images: int
    images_per_second: float | None = None  # stream throughput, when measured
    pixel_diversity: float | None = None  # within-class mean pairwise distance of the (normalized) images,
    # average-pooled to pixel_size x pixel_size
    real_pixel_diversity: float | None = None
    confidence: float | None = None  # the teacher's mean top softmax probability on the images
    real_confidence: float | None = None
    pixel_size: int = PIXEL_SIZE

    @property
    def diversity_ratio(self) -> float | None:
        return None if not self.real_diversity else self.diversity / self.real_diversity

    @property
    def pixel_diversity_ratio(self) -> float | None:
        if not self.real_pixel_diversity or self.pixel_diversity is None:
            return None
        return self.pixel_diversity / self.real_pixel_diversity

    def to_dict(self) -> dict:
        return {**asdict(self), "diversity_ratio": self.diversity_ratio,
                "pixel_diversity_ratio": self.pixel_diversity_ratio}


def _pixel_vectors(x: torch.Tensor, size: int = PIXEL_SIZE) -> torch.Tensor:
    """Images as vectors for the pixel-diversity figure, average-pooled to at most size x size."""
    if x.shape[-1] > size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, size)
    return x.flatten(1).cpu()


@dataclass
class _Judged:
    """What one pass of the teacher over some batches gives: per image its penultimate features, label,
    pixel vector and top softmax probability; totals of correct predictions and, when measured, of the
    per-batch BN losses."""

    features: torch.Tensor
    labels: torch.Tensor
    pixels: torch.Tensor
    top_prob: torch.Tensor
    correct: int
    bn_kl: float
    bn_l2: float
    num_batches: int


@torch.no_grad()
def _judge(teacher: nn.Module, batches: Iterable, *, bn_losses: bool, pixel_size: int) -> _Judged:
    feats, labels, pixels, top = [], [], [], []
    correct = num_batches = 0
    kl = l2 = 0.0
    device = next(teacher.parameters()).device
    with capture_penultimate(teacher) as captured:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with BNStatsRecorder(teacher) if bn_losses else contextlib.nullcontext() as rec:
                logits = teacher(x)
            if bn_losses:
                kl += bn_kl_loss(rec.stats).item()
                l2 += bn_l2_loss(rec.stats).item()
            top.append(logits.softmax(1).amax(1).cpu())
            correct += (logits.argmax(1) == y).sum().item()
            num_batches += 1
            feats.append(captured[-1].cpu())
            labels.append(y.cpu())
            pixels.append(_pixel_vectors(x, pixel_size))
    if num_batches == 0:
        raise ValueError("no images to judge: the batches were empty")
    return _Judged(torch.cat(feats), torch.cat(labels), torch.cat(pixels), torch.cat(top), correct, kl, l2,
                   num_batches)


def measure_quality(teacher: nn.Module, batches: Iterable, *, real_batches: Iterable | None = None,
                    pixel_size: int = PIXEL_SIZE) -> QualityReport:
    """Judge (normalized images, labels) batches from any source with the teacher (in eval mode): its top-1
    against the labels, its mean top softmax probability (confidence), both BN losses (averaged over
    batches), and within-class feature and pixel diversity (images average-pooled to `pixel_size`), beside
    those of `real_batches` when given."""
    with frozen(teacher):
        seen = _judge(teacher, batches, bn_losses=True, pixel_size=pixel_size)
        real = (_judge(teacher, real_batches, bn_losses=False, pixel_size=pixel_size)
                if real_batches is not None else None)
    return QualityReport(
        teacher_top1=100 * seen.correct / len(seen.labels), bn_kl=seen.bn_kl / seen.num_batches,
        bn_l2=seen.bn_l2 / seen.num_batches, diversity=within_class_distance(seen.features, seen.labels),
        real_diversity=within_class_distance(real.features, real.labels) if real else None,
        num_images=len(seen.labels), pixel_diversity=within_class_distance(seen.pixels, seen.labels),
        real_pixel_diversity=within_class_distance(real.pixels, real.labels) if real else None,
        confidence=seen.top_prob.mean().item(), real_confidence=real.top_prob.mean().item() if real else None,
        pixel_size=pixel_size,
    )


def stream_throughput(stream: SyntheticStream, *, num_batches: int = 4) -> float:
    """Images per second that `stream` generates (after one warm-up batch)."""
    stream.make_batch(0)
    start = time.perf_counter()
    for i in range(num_batches):
        stream.make_batch(1 + i)
    return num_batches * stream.batch_size / (time.perf_counter() - start)
