"""Distillation data variants for `bench/distill_probe.py --variant` (probes, not the library).

Each is an endless iterator of (normalized images, labels) drawn at random from a cached set of batches and
shifted and flipped (`jittered_batches`, the plain variant), then changed further:

- `strong`: a random resized crop (35% to all of the area) and a cutout square of 11 by 11 pixels per
  image (`cutout(x, 12)`: pixels less than 6 from a random centre).
- `adversarial`: the first `share` of each batch moved by `steps` signed-gradient steps (in normalized
  units, `eps` in all) toward more disagreement, KL(teacher || student) at temperature 1: images near
  where the student still differs from its teacher.
- `lowpass`: a Gaussian low-pass filter in the Fourier domain (sigma `cutoff` times the Nyquist frequency),
  applied once to a whole set (SynQ's observation that synthetic images carry high-frequency noise).

Labels are the teacher's (the distillation loss does not use them unless its `ce_weight` is set).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from dfq.distill import frozen_parameters, kd_loss, student_training_mode
from generators.augment import random_jitter, random_resized_crop


def _jittered_draws(images: list[torch.Tensor], teacher: nn.Module, batch_size: int, seed: int
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Generator]]:
    """Endless (images, teacher labels, the random generator) draws of `batch_size` from `images`, each image
    shifted and flipped; the variants draw their further randomness from the generator handed out."""
    pool = torch.cat(images)
    with torch.no_grad():
        labels = torch.cat([teacher(x).argmax(1) for x in pool.split(512)])
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(pool), (batch_size,), generator=g)
        yield random_jitter(pool[idx], max_shift=2, generator=g), labels[idx], g


def jittered_batches(images: list[torch.Tensor], teacher: nn.Module, batch_size: int, seed: int
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y, _ in _jittered_draws(images, teacher, batch_size, seed):
        yield x, y


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero (the normalized mean) the pixels less than size // 2 from a random centre in both directions, per
    image (a square of side 2 * (size // 2) - 1, clipped at the border)."""
    b, _, h, w = x.shape
    cy, cx = torch.randint(h, (b,), generator=generator), torch.randint(w, (b,), generator=generator)
    rows = (torch.arange(h)[None, :] - cy[:, None]).abs() < size // 2  # (B, H)
    cols = (torch.arange(w)[None, :] - cx[:, None]).abs() < size // 2  # (B, W)
    return x * ~(rows[:, None, :, None] & cols[:, None, None, :]).to(x.device)


def strong_batches(images: list[torch.Tensor], teacher: nn.Module, batch_size: int, seed: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y, g in _jittered_draws(images, teacher, batch_size, seed):
        yield cutout(random_resized_crop(x, scale=(0.35, 1.0), generator=g), 12, g), y


def adversarial_batches(images: list[torch.Tensor], teacher: nn.Module, student: nn.Module, batch_size: int,
                        seed: int, *, steps: int = 3, eps: float = 0.3, share: float = 0.5
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = int(share * batch_size)
    for x, y, _ in _jittered_draws(images, teacher, batch_size, seed):
        moved = x[:n].clone()
        with student_training_mode(student, freeze_bn=True), frozen_parameters(student):
            for _ in range(steps):
                moved.requires_grad_(True)
                disagreement = kd_loss(student(moved), teacher(moved), 1.0)
                (grad,) = torch.autograd.grad(disagreement, moved)
                moved = (moved + eps / steps * grad.sign()).detach()
        yield torch.cat([moved, x[n:]]), y


def lowpass(x: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Gaussian low-pass of a batch (B, C, H, W): frequencies f (in units of the Nyquist frequency) are
    scaled by exp(-|f|^2 / (2 cutoff^2))."""
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device)[:, None] * 2
    fx = torch.fft.fftfreq(w, device=x.device)[None, :] * 2
    return torch.fft.ifft2(torch.fft.fft2(x) * torch.exp(-(fy ** 2 + fx ** 2) / (2 * cutoff ** 2))).real
