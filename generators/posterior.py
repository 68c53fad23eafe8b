"""The generator's latent posterior q(z | x): the term that makes the latent matter.

A conditional generator trained to match BatchNorm statistics and a class loss can ignore its latent: one
image per class satisfies the class loss, and the whole batch's statistics can be met by the classes
differing from each other. Training a small network q(z | x) beside the generator, both minimizing the
negative log-likelihood of the z an image was drawn from, maximizes a variational lower bound on the mutual
information between z and the image (Barber and Agakov 2003; InfoGAN, Chen et al. 2016):

    I(z; x) >= H(z) + E[log q(z | x)].

q reads the image average-pooled to `size` x `size`, so the information has to be carried by the image's
coarse layout and colours, not by per-pixel noise: different z, visibly different images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LatentPosterior(nn.Module):
    """q(z | x) as a diagonal Gaussian: images in [0, 1], (B, C, H, W), to (mean, log-variance) of z."""

    def __init__(self, latent_dim: int, channels: int = 3, size: int = 8, hidden: int = 512) -> None:
        super().__init__()
        if size < 1 or hidden < 1 or latent_dim < 1:
            raise ValueError("latent_dim, size and hidden must be positive")
        self.size = size
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * size * size, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.adaptive_avg_pool2d(images, self.size)
        mean, logvar = self.net(pooled).chunk(2, dim=1)
        return mean, logvar.clamp(-6.0, 2.0)


def latent_nll(mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-log q(z | x) per latent dimension, averaged over the batch (with the Gaussian's constant, so that a
    posterior that knows nothing, N(0, 1), scores the entropy of N(0, 1) per dimension, about 1.42, and one
    that knows z exactly goes below it)."""
    return 0.5 * (logvar + (z - mean) ** 2 / logvar.exp() + math.log(2 * math.pi)).mean()
