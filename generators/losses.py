"""Image-prior and anti-collapse terms for generator training."""

from __future__ import annotations

import torch


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV), averaged over the batch."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    return dh + dw


def mode_seeking_loss(x1: torch.Tensor, x2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode-seeking term (Mao et al. 2019): for pairs generated from different latents with the same labels,
    1 / (d(x1, x2) / d(z1, z2) + eps), averaged over pairs. Small when different z give different images;
    large when the generator ignores z (mode collapse)."""
    dx = (x1 - x2).abs().flatten(1).mean(dim=1)
    dz = (z1 - z2).abs().flatten(1).mean(dim=1)
    return (1.0 / (dx / dz + eps)).mean()
