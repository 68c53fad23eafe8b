"""What a teacher expects at its input."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """A classifier's input contract.

    image_size: side of the square input the model sees, e.g. 32 or 224.
    channels: input channels (3 for RGB).
    mean, std: per-channel normalization applied to [0, 1] pixels.
    num_classes: number of output logits.
    resize_size: for evaluation, resize the shorter side to this before a center crop of image_size;
        None means the images are used at their own size (center-cropped if larger).
    interpolation: resize interpolation, a torchvision InterpolationMode value name ("bilinear", "bicubic").
    """

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    resize_size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SpecOverrides:
    """What a user says about a teacher's input where its builder cannot know it: a checkpoint trained with
    another normalization, image size or number of classes. Fields left None keep the builder's value.

    `num_classes` also changes the model (its classifier is built with that many outputs); the others change
    only what the model is fed. Recorded with every generator and student, so later commands read them back.
    """

    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 8):
            raise ValueError(f"image size must be an integer of at least 8 pixels, got {self.image_size!r}")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 2):
            raise ValueError(f"number of classes must be an integer of at least 2, got {self.num_classes!r}")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and any(v != v or abs(v) == float("inf") for v in value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean and std need one value per input channel each; got {len(self.mean)} and "
                             f"{len(self.std)} values")

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("image_size", "mean", "std", "num_classes"))

    def apply(self, spec: InputSpec) -> InputSpec:
        """`spec` with these values in place of its own. A new image size scales the evaluation resize with it
        (224 of 256 becomes 160 of 183), so the crop keeps its share of the image."""
        changes = self.to_dict()
        if "mean" in changes or "std" in changes:
            channels = len(changes.get("mean", changes.get("std")))
            if channels != spec.channels:
                raise ValueError(f"the model takes {spec.channels} input channels: mean and std need "
                                 f"{spec.channels} values each, got {channels}")
        if self.image_size is not None and spec.resize_size is not None and self.image_size != spec.image_size:
            changes["resize_size"] = round(self.image_size * spec.resize_size / spec.image_size)
        try:
            return dataclasses.replace(spec, **changes)
        except ValueError as exc:
            raise ValueError(f"the input spec given does not fit the model: {exc}") from None

    def to_dict(self) -> dict:
        """The fields that are set (tuples as tuples; JSON writes them as lists)."""
        return {k: getattr(self, k) for k in ("image_size", "mean", "std", "num_classes") if getattr(self, k) is not None}

    @classmethod
    def from_dict(cls, data: dict | None) -> SpecOverrides:
        """Overrides from `to_dict()`'s output, or from a whole recorded InputSpec (its other fields ignored)."""
        data = data or {}
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in data.items()
                      if k in ("image_size", "mean", "std", "num_classes") and v is not None})
