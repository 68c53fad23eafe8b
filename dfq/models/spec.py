"""What a teacher expects at its input."""

from __future__ import annotations

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
