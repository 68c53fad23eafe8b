"""Where calibration images come from, named by a source string: `real:DIR` (an ImageFolder or CIFAR root of
real images, the ceiling every data-free method is judged against)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from dfq.data import load_dataset
from dfq.models.spec import InputSpec

SOURCE_KINDS = ("real",)


@dataclass(frozen=True)
class Source:
    kind: str
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


def parse_source(text: str) -> Source:
    """Parse `KIND:PATH`.

    Raises:
        ValueError: no kind, or an unknown kind.
    """
    kind, sep, path = text.partition(":")
    if not sep or not path:
        raise ValueError(f"source {text!r} must look like KIND:PATH, e.g. real:../shared/assets/cifar10-jpeg/train")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r} in {text!r}; supported: {', '.join(SOURCE_KINDS)}")
    return Source(kind, Path(path).expanduser())


def real_calibration_loader(
    path: str | Path, spec: InputSpec, *, num_images: int, batch_size: int = 128, seed: int = 0, num_workers: int = 0
) -> DataLoader:
    """`num_images` real images drawn at random (seeded) from `path`, with the teacher's preprocessing.

    Raises:
        ValueError: num_images is not positive or exceeds the images available; the errors of load_dataset.
    """
    ds = load_dataset(path, spec, train=True)
    if not 0 < num_images <= len(ds):
        raise ValueError(f"asked for {num_images} calibration images but {str(path)!r} holds {len(ds)}")
    gen = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(ds), generator=gen)[:num_images].tolist()
    return DataLoader(Subset(ds, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers)
