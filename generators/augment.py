"""Random crop (by shifting within a padded frame) and horizontal flip, per sample, batched, differentiable."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_jitter(
    x: torch.Tensor, *, max_shift: int = 2, flip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image by up to `max_shift` pixels in each direction (reflect-padded, like a random crop
    of a padded image) and flip half of them horizontally. Gradients flow to `x`."""
    b, c, h, w = x.shape
    if flip:
        flips = torch.rand(b, generator=generator, device="cpu").to(x.device) < 0.5
        x = torch.where(flips[:, None, None, None], x.flip(3), x)
    if max_shift <= 0:
        return x
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="reflect")  # (B, C, H+2p, W+2p)
    oy, ox = (torch.randint(0, 2 * p + 1, (2, b), generator=generator, device="cpu").to(x.device))
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
