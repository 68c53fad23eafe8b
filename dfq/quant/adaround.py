"""AdaRound (Nagel et al. 2020): learn, per weight, whether to round down or up.

`AdaRoundWeight` holds one continuous variable per weight, alpha, and the soft rounding offset
h(alpha) = clip(sigmoid(alpha) * (zeta - gamma) + gamma, 0, 1) in [0, 1]; the weight is
(clamp(floor(w / s) + h + z, qmin, qmax) - z) * s. The regularizer pushes every h to 0 or 1; at the end the
hard choice (alpha >= 0) is written into the layer's float weight, which is then exactly on the grid of
the layer's weight quantizer, so nothing of AdaRound needs to be kept.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from dfq.quant.primitives import broadcast_to_axis

ZETA, GAMMA = 1.1, -0.1


class AdaRoundWeight(nn.Module):
    """Learned rounding of one layer's weight on its weight quantizer's (fixed) grid."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        q = layer.weight_quantizer
        if q is None or not q._ready:
            raise ValueError("AdaRound needs a layer whose weight quantizer has a range")
        self.quantizer = [q]  # a list, so the quantizer is not registered twice as a submodule
        w = layer.weight.detach()
        s, z = self._scale_zero(w)
        scaled = w / s
        floor = torch.floor(scaled)
        rest = (scaled - floor).clamp(1e-4, 1 - 1e-4)  # h(alpha) = rest at the start
        self.register_buffer("w_floor", floor)
        self.alpha = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def _scale_zero(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.quantizer[0]
        return (broadcast_to_axis(q.scale.detach(), w, q.spec.axis),
                broadcast_to_axis(q.zero_point, w, q.spec.axis))

    def soft_offset(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, *, hard: bool = False) -> torch.Tensor:
        """The quantized weight with soft (training) or hard (final) rounding."""
        q = self.quantizer[0]
        offset = (self.alpha >= 0).to(self.alpha.dtype) if hard else self.soft_offset()
        s, z = self._scale_zero(self.w_floor)
        codes = torch.clamp(self.w_floor + offset + z, q._qmin, q._qmax)
        return (codes - z) * s

    def undecided(self, margin: float = 0.1) -> int:
        """How many soft offsets still lie more than `margin` away from both 0 and 1: weights whose final
        hard rounding the optimization did not settle."""
        h = self.soft_offset().detach()
        return int(((h > margin) & (h < 1 - margin)).sum())

    def regularizer(self, beta: float) -> torch.Tensor:
        """sum(1 - |2h - 1|^beta): zero once every offset is exactly 0 or 1."""
        return (1 - (2 * self.soft_offset() - 1).abs().pow(beta)).sum()


@contextlib.contextmanager
def adaround(layers: list[nn.Module]):
    """Within the block, each layer's weight is quantized with a learned AdaRound rounding (yielded as a
    list of AdaRoundWeight, whose `alpha` parameters are to be optimized). On a clean exit the hard
    rounding is written into each layer's weight; on any exit the layers quantize as before."""
    roundings = [AdaRoundWeight(layer) for layer in layers]
    for layer, rounding in zip(layers, roundings):
        layer.weight_rounding = rounding
    try:
        yield roundings
        with torch.no_grad():
            for layer, rounding in zip(layers, roundings):
                layer.weight.copy_(rounding(hard=True))
    finally:
        for layer in layers:
            layer.weight_rounding = None
