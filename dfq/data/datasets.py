"""Real-image datasets with a teacher's own preprocessing: ImageFolder trees and torchvision CIFAR roots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from dfq import distributed
from dfq.models.spec import InputSpec

IMAGE_EXTENSIONS = datasets.folder.IMG_EXTENSIONS


def eval_transform(spec: InputSpec) -> v2.Compose:
    """The teacher's evaluation preprocessing for a PIL image or uint8 tensor: optional resize (antialiased),
    center crop, scale to [0, 1], normalize."""
    steps: list = [v2.ToImage()]
    if spec.resize_size is not None:
        mode = v2.InterpolationMode(spec.interpolation)
        steps.append(v2.Resize(spec.resize_size, interpolation=mode, antialias=True))
    steps += [
        v2.CenterCrop(spec.image_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(spec.mean, spec.std),
    ]
    return v2.Compose(steps)


def _cifar_kind(root: Path) -> str | None:
    if (root / "cifar-10-batches-py").is_dir():
        return "cifar10"
    if (root / "cifar-100-python").is_dir():
        return "cifar100"
    return None


def load_dataset(path: str | os.PathLike, spec: InputSpec, *, train: bool = False) -> Dataset:
    """A labelled image dataset at `path` preprocessed for `spec`.

    `path` is either an ImageFolder directory (one subfolder per class, e.g. `cifar10-jpeg/test` or an
    ImageNet val folder) or a torchvision CIFAR-10/100 root (holding `cifar-10-batches-py` or
    `cifar-100-python`; `train` picks its split). The dataset exposes `.targets`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the folder has no class subfolders or no images, or its class count differs from
            `spec.num_classes`.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"data path {str(root)!r} does not exist; pass an ImageFolder directory (one subfolder per class) "
            "or a torchvision CIFAR-10/100 root"
        )
    if not root.is_dir():
        raise ValueError(f"data path {str(root)!r} is a file; pass a directory")
    kind = _cifar_kind(root)
    if kind == "cifar10":
        ds: Dataset = datasets.CIFAR10(root, train=train, transform=eval_transform(spec), download=False)
    elif kind == "cifar100":
        ds = datasets.CIFAR100(root, train=train, transform=eval_transform(spec), download=False)
    else:
        ds = _image_folder(root, spec)
    num_classes = len(ds.classes)
    if num_classes != spec.num_classes:
        raise ValueError(
            f"data at {str(root)!r} has {num_classes} classes but the model has {spec.num_classes} outputs; "
            "point --data at the dataset the model was trained for"
        )
    return ds


def read_image(path: str) -> Image.Image:
    """An RGB image from a file, or a ValueError naming the file when it is not a readable image."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise ValueError(f"image file {path!r} cannot be read ({type(exc).__name__}: {exc}); "
                         "remove or replace it") from None


def _image_folder(root: Path, spec: InputSpec) -> datasets.ImageFolder:
    class_dirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if not class_dirs:
        raise ValueError(
            f"data folder {str(root)!r} is empty: it has no class subfolders. Expected the ImageFolder layout "
            f"{root}/<class>/<image>.jpg, or a torchvision CIFAR root"
        )
    ds = datasets.ImageFolder(str(root), transform=eval_transform(spec), loader=read_image, allow_empty=True)
    if len(ds) == 0:
        raise ValueError(f"data folder {str(root)!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return ds


SPLITS = ("all", "select", "report")


def split_indices(targets: Sequence[int], split: str) -> list[int]:
    """The indices of a held-out set's `split`: "all", or one of two disjoint halves, "select" and "report".

    Within each class, in the dataset's own order, images at even positions (0, 2, 4, ...) form "select" and
    those at odd positions "report", so each half keeps the class balance and every class is halved. Defaults
    and sweeps choose on "select"; results are reported on "report", which no selection run looks at. (On an
    ImageFolder the order is the sorted file names.)

    Raises:
        ValueError: an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "all":
        return list(range(len(targets)))
    parity = 0 if split == "select" else 1
    position: dict[int, int] = {}
    chosen = []
    for i, t in enumerate(targets):
        k = position.get(int(t), 0)
        position[int(t)] = k + 1
        if k % 2 == parity:
            chosen.append(i)
    return chosen


def stratified_indices(targets: Sequence[int], limit: int) -> list[int]:
    """The first `limit` indices taken round-robin over classes, in each class's own order.

    With 10 balanced classes, limit=1000 gives the first 100 images of each class: a subset with the full
    set's class balance, unlike the first 1,000 files, which are all one class in a sorted ImageFolder.
    """
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    per_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        per_class.setdefault(int(t), []).append(i)
    queues = [per_class[c] for c in sorted(per_class)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen)


def build_eval_loader(
    path: str | os.PathLike,
    spec: InputSpec,
    *,
    batch_size: int = 256,
    limit: int | None = None,
    split: str = "all",
    num_workers: int = 1,
    train: bool = False,
) -> DataLoader:
    """A deterministic evaluation loader over `load_dataset(path, spec)`: the images of `split` (see
    `split_indices`), of which `limit` keeps a class-balanced subset (see `stratified_indices`); where several
    processes run together (`dfq.distributed`), this process's shard of them (`evaluate` sums the counts).

    Raises:
        The errors of `load_dataset`, and ValueError for a non-positive batch size or limit or an unknown split.
    """
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    ds = load_dataset(path, spec, train=train)
    indices = split_indices(ds.targets, split)
    if limit is not None and limit < len(indices):
        targets = [ds.targets[i] for i in indices]
        indices = [indices[i] for i in stratified_indices(targets, limit)]
    if not indices:
        raise ValueError(f"the {split!r} half of {str(path)!r} holds no images (it has {len(ds)} in all); use "
                         "--split all or a larger folder")
    indices = distributed.shard_indices(indices)  # this process's share where several evaluate together
    if len(indices) < len(ds):
        ds = Subset(ds, indices)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


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
