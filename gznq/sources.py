"""Where calibration images come from, named by a source string:

    real:DIR        real images (ImageFolder or CIFAR root): the ceiling data-free methods are judged against
    generator:DIR   a generator trained with `train.py generator` for the same teacher: a seeded stream
    pixels:DIR      a pixel-optimized set made with `train.py pixels` (the ZeroQ/DeepInversion baseline)
    noise           seeded noise images, sigmoid(N(0, 1)) per pixel, to be refined (`refine.steps` > 0): the
                    no-generator control, refinement from noise with the same refinement a generator's samples get
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from dfq import distributed
from dfq.data import real_calibration_loader
from dfq.io import atomic_write
from dfq.models.spec import InputSpec
from generators.checkpoint import WEIGHTS_FILE, load_generator, teacher_fingerprint
from generators.generator_refine import refined_stream
from generators.network import normalize
from generators.pixel_opt import load_pixels
from generators.refine import RefineConfig, RefinedBatches
from generators.stream import SyntheticStream, batch_seed

SOURCE_KINDS = ("real", "generator", "pixels", "noise")
REFINABLE = ("generator", "noise")  # sources whose batches refinement applies to


@dataclass(frozen=True)
class Source:
    kind: str
    path: Path | None  # None for noise

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_source(text: str) -> Source:
    """Parse `KIND:PATH`.

    Raises:
        ValueError: no kind, or an unknown kind.
    """
    if str(text) in ("noise", "noise:"):
        return Source("noise", None)
    if str(text).startswith("noise:"):
        raise ValueError(f"source {text!r}: noise takes no path; write just 'noise'")
    kind, sep, path = str(text).partition(":")
    if not sep or not path:
        raise ValueError(f"source {text!r} must look like KIND:PATH, e.g. real:../shared/assets/cifar10-jpeg/train")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r} in {text!r}; supported: {', '.join(SOURCE_KINDS)}")
    return Source(kind, Path(path).expanduser())


def open_source(
    source: Source,
    *,
    teacher: nn.Module,
    teacher_name: str,
    spec: InputSpec,
    num_images: int,
    batch_size: int = 128,
    seed: int = 0,
    num_workers: int = 0,
    refine: RefineConfig | None = None,
) -> Iterable:
    """Batches of (normalized images, labels) from `source`, `num_images` in all (rounded up to whole
    batches for a generator). With `refine` (generator sources only), each generated batch is refined
    against the teacher's BN statistics before it is handed out (generators.refine).

    Raises:
        ValueError / FileNotFoundError: a source that does not exist, belongs to another teacher, or holds
            fewer images than asked for; refinement asked of a source that is not a generator.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    refining = refine is not None and refine.steps != 0
    if refining and source.kind not in REFINABLE:
        raise ValueError(f"refinement applies to generator and noise sources, not {source.kind}:; set its steps to 0")
    if source.kind == "noise" and not refining:
        raise ValueError("the noise source is a starting point for refinement: give refinement steps > 0")
    if source.kind == "real":
        return real_calibration_loader(source.path, spec, num_images=num_images, batch_size=batch_size, seed=seed,
                                       num_workers=num_workers)
    device = next(teacher.parameters()).device
    if refining and refine.space == "generator" and source.kind != "generator":
        raise ValueError(f"refinement through the generator (refine.space='generator') needs a generator source, "
                         f"not {source.kind}:; refine its pixels (space='pixels') instead")
    if source.kind == "noise":
        noise = NoiseBatches(spec, batch_size=batch_size, num_batches=math.ceil(num_images / batch_size), seed=seed,
                             device=device)
        return RefinedBatches(noise, teacher, spec, refine, seed=seed)
    if source.kind == "generator":
        generator, _ = load_generator(source.path, teacher_name=teacher_name, teacher=teacher, device=device)
        stream = SyntheticStream(generator, spec.mean, spec.std, batch_size=batch_size, seed=seed,
                                 num_batches=math.ceil(num_images / batch_size), device=device, normalized=not refining)
        return refined_stream(stream, teacher, spec, refine, seed=seed) if refining else stream
    images, labels, _ = load_pixels(source.path, teacher_name=teacher_name)
    if num_images > len(labels):
        raise ValueError(f"asked for {num_images} images but the pixel set {source.path} holds {len(labels)}")
    images = normalize(images[:num_images], spec.mean, spec.std)
    return DataLoader(TensorDataset(images.to(device), labels[:num_images].to(device)), batch_size=batch_size)


class NoiseBatches:
    """`num_batches` batches of (noise images in [0, 1], class-balanced labels), batch i seeded by (seed, i)."""

    def __init__(self, spec: InputSpec, *, batch_size: int, num_batches: int, seed: int = 0, device=None) -> None:
        self.spec, self.batch_size, self.num_batches, self.seed = spec, batch_size, num_batches, seed
        self.device = device

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        s = self.spec
        for index in range(self.num_batches):
            rng = torch.Generator().manual_seed(batch_seed(self.seed, index))
            labels = (torch.arange(self.batch_size) + index * self.batch_size) % s.num_classes
            images = torch.sigmoid(torch.randn(self.batch_size, s.channels, s.image_size, s.image_size, generator=rng))
            yield images.to(self.device), labels.to(self.device)


def check_source(source: Source) -> None:
    """Refuse a source whose path is not there, before any work is done.

    Raises:
        FileNotFoundError: the path does not exist, with the command that makes it.
    """
    if source.path is None or source.path.exists():
        return
    make = {"real": "an ImageFolder directory (one subfolder per class) or a CIFAR root",
            "generator": "a generator directory made by `train.py generator`",
            "pixels": "a pixel set made by `train.py pixels`"}[source.kind]
    raise FileNotFoundError(f"source {str(source)!r}: {str(source.path)!r} does not exist; expected {make}")


# the RefineConfig fields the image cache's keys were first written with, always in the key
FIRST_KEYED_REFINE_FIELDS = ("steps", "lr", "bn_loss", "bn_weight", "ce_weight", "tv_weight", "max_shift", "flip",
                             "boundary_share", "boundary_min", "crop_scale")
# every field added since, with its value when it was added: the key leaves such a field out at that value, so
# that sets cached before it existed are still found, and holds it at any other value, its default of today
# included, so that changing a default later can never let an old set be read as a new one. A new RefineConfig
# field needs an entry here (RefineKey refuses a field in neither); the values are history, never to be edited.
# (Sets refined through the generator before this rule had weight_lr=0.001 in their key and are made again.)
LATER_REFINE_FIELDS_FIRST_VALUE = {"start_logit_scale": 1.0, "spread_weight": 0.0, "precision": "float32",
                                   "space": "pixels", "weight_lr": 1e-3}


class RefineKey:
    """A RefineConfig as the cache key spells it: its repr, less the fields added after FIRST_KEYED_REFINE_FIELDS
    that hold the value they had when they were added (LATER_REFINE_FIELDS_FIRST_VALUE)."""

    def __init__(self, refine: RefineConfig | None) -> None:
        self.refine = refine

    def __repr__(self) -> str:
        r = self.refine
        if r is None:
            return "None"
        kept = []
        for f in dataclasses.fields(r):  # every field, repr or not: a field the key left out could be misread
            if f.name not in FIRST_KEYED_REFINE_FIELDS and f.name not in LATER_REFINE_FIELDS_FIRST_VALUE:
                raise RuntimeError(f"RefineConfig.{f.name} is in neither FIRST_KEYED_REFINE_FIELDS nor "
                                   "LATER_REFINE_FIELDS_FIRST_VALUE of gznq/sources.py: add it to the latter with "
                                   "its default, so that the image cache keys it")
            if (f.name in FIRST_KEYED_REFINE_FIELDS
                    or getattr(r, f.name) != LATER_REFINE_FIELDS_FIRST_VALUE[f.name]):
                kept.append(f)
        return f"{type(r).__name__}(" + ", ".join(f"{f.name}={getattr(r, f.name)!r}" for f in kept) + ")"


def image_set(source: Source, *, teacher: nn.Module, teacher_name: str, spec: InputSpec, num_images: int,
              batch_size: int, seed: int, refine: RefineConfig | None = None, workers: int = 0,
              cache_dir: str | Path | None = None, progress: bool = False) -> tuple[list[torch.Tensor], float, bool]:
    """`num_images` normalized images of `source` as a list of batches (labels dropped), made with
    `open_source`, and the seconds their making took. With `cache_dir`, a set made before with the same
    teacher, source, count, batch size, seed and refinement is read from there instead (its making's seconds
    are returned, so that times stay comparable) and a new one is kept there. A generator source is keyed by
    its weights as well as its path: one trained again at the same path makes its sets anew.

    Returns:
        (batches, seconds of making, whether the set came from the cache).
    """
    key = repr((teacher_name, teacher_fingerprint(teacher), spec, str(source), num_images, batch_size, seed,
                RefineKey(refine)))
    weights = source.path / WEIGHTS_FILE if source.kind == "generator" else None
    if weights is not None and weights.is_file():  # the path alone would serve a generator trained there before
        key += repr(("generator weights", hashlib.sha256(weights.read_bytes()).hexdigest()[:16]))
    if distributed.world_size() > 1:  # a generator's stream gives each process other batches
        key += repr(("process", distributed.rank(), distributed.world_size()))
    file = Path(cache_dir) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cache_dir else None
    if file is not None and file.is_file():
        saved = torch.load(file, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            raise ValueError(f"{file} holds another image set ({saved.get('key')}); remove it")
        device = next(teacher.parameters()).device
        return [x.to(device) for x in saved["images"]], float(saved["seconds"]), True
    start = time.perf_counter()
    batches = open_source(source, teacher=teacher, teacher_name=teacher_name, spec=spec, num_images=num_images,
                          batch_size=batch_size, seed=seed, num_workers=workers, refine=refine)
    desc = "refine images" if refine is not None and refine.steps != 0 else "load images"
    images = [x for x, _ in tqdm(batches, desc=desc, disable=not progress, leave=False)]
    seconds = time.perf_counter() - start
    if file is not None:
        record = {"key": key, "images": [x.cpu() for x in images], "seconds": seconds}
        atomic_write(file, lambda tmp: torch.save(record, tmp))
    return images, seconds, False
