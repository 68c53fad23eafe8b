"""TensorFlow's "SAME" padding, as timm's `Conv2dSame` computes it, for float and quantized convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def same_pad(x: torch.Tensor, kernel_size, stride, dilation) -> torch.Tensor:
    """Zero-pad `x` as TensorFlow's "SAME" does: the output has ceil(input / stride) positions, the odd pixel
    of padding at the bottom / right."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel_size, stride, dilation):
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.pad(x, (left, right, top, bottom))


class SamePadConv2d(nn.Conv2d):
    """A Conv2d with TensorFlow's "SAME" padding, computed from each input's size (`padding` must be 0)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.padding != (0, 0) or self.padding_mode != "zeros":
            raise ValueError(f"SamePadConv2d computes its own padding; got padding {self.padding} "
                             f"({self.padding_mode})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(same_pad(x, self.kernel_size, self.stride, self.dilation))
