"""PNG grids of generated samples: one row per class."""

from __future__ import annotations

import os

import torch
from torchvision.utils import make_grid, save_image

from dfq.io import atomic_write


@torch.no_grad()
def class_samples(generator, *, per_class: int = 10, classes: list[int] | None = None,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [0, 1] on the CPU, labels): `per_class` samples of each class (at most the first 20
    classes), grouped by class."""
    c = generator.config
    classes = list(range(min(c.num_classes, 20))) if classes is None else classes
    device = next(generator.parameters()).device
    g = torch.Generator(device="cpu").manual_seed(seed)
    y = torch.tensor(classes, device=device).repeat_interleave(per_class)
    z = torch.randn(len(y), c.latent_dim, generator=g).to(device)
    was_training = generator.training
    generator.eval()
    try:
        images = generator(z, y, sample=True)
    finally:
        generator.train(was_training)
    return images.cpu(), y.cpu()


def class_grid(generator, *, per_class: int = 10, classes: list[int] | None = None, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) grid, one row per class (at most the first 20 classes), `per_class` samples each."""
    images, _ = class_samples(generator, per_class=per_class, classes=classes, seed=seed)
    return make_grid(images, nrow=per_class, padding=1, pad_value=1.0)


def save_class_grid(generator, path: str | os.PathLike, **kwargs) -> None:
    """Write `class_grid(generator, **kwargs)` to a PNG, atomically."""
    grid = class_grid(generator, **kwargs)
    atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))
