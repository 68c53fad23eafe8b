"""Augmentations of image batches, per sample, batched, differentiable: random crop (by shifting within a padded
frame) and horizontal flip, jittered copies of a set, random resized crops."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

REFERENCE_SIDE = 32  # jitter sizes are given in pixels of a CIFAR-size image


def scaled_shift(pixels_at_32: int, image_side: int) -> int:
    """A jitter of `pixels_at_32` pixels on a 32-pixel image, scaled to an image of `image_side` pixels, so that
    it moves the same share of the image (2 at 32 is 14 at 224; at 32 unchanged; at least 1 where asked)."""
    if pixels_at_32 <= 0:
        return 0
    return max(1, round(pixels_at_32 * image_side / REFERENCE_SIDE))


def random_jitter(
    x: torch.Tensor, *, max_shift: int = 2, flip: bool = True, generator: torch.Generator | None = None,
    rows: torch.Tensor | None = None, batch: int | None = None,
) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in each direction (reflect-padded, like a random crop
    of a padded image) and flip half of them horizontally. Gradients flow to `x`. With `rows` (and `batch`),
    `x` holds those rows of a batch of `batch` images: the random draws are those of the whole batch, so
    that data-parallel processes jitter their shares as one process jitters all of it."""
    b, c, h, w = x.shape
    drawn = b if rows is None else batch

    def mine(t: torch.Tensor) -> torch.Tensor:
        return t if rows is None else t[..., rows.cpu()]

    if flip:
        flips = mine(torch.rand(drawn, generator=generator, device="cpu")).to(x.device) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    if max_shift <= 0:
        return x
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="reflect")  # (B, C, H+2p, W+2p)
    oy, ox = mine(torch.randint(0, 2 * p + 1, (2, drawn), generator=generator, device="cpu")).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * p)
    padded = padded.gather(2, rows)  # (B, C, H, W+2p)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return padded.gather(3, cols)


def with_jittered_copies(
    batches: list[torch.Tensor], copies: int, *, max_shift: int = 4, seed: int = 0
) -> list[torch.Tensor]:
    """`batches` followed by `copies` copies of them, each image shifted by up to `max_shift` pixels and
    flipped at random (`random_jitter`): a reconstruction set enlarged with label-preserving views, as a
    classifier's training augmentation would make them."""
    if copies < 0:
        raise ValueError(f"the number of jittered copies must be >= 0, got {copies}")
    g = torch.Generator().manual_seed(seed)
    return list(batches) + [random_jitter(x, max_shift=max_shift, generator=g) for _ in range(copies) for x in batches]


def random_resized_crop(
    x: torch.Tensor, *, scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per image, a random crop of `scale` (share of the area) and aspect `ratio`, resized back to the
    image's size by bilinear sampling (reflecting at the border where a wide crop leaves the frame), as a
    classifier's training augmentation would make it. Random numbers are drawn on the CPU so that a seed
    gives the same crops on every device."""
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    b = x.shape[0]
    area = torch.empty(b).uniform_(lo, hi, generator=generator)
    aspect = torch.exp(torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # as shares of the image's width and height
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - width)  # centre, in [-1, 1] coordinates
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - height)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, cx, height, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
