"""Quantized element-wise and pooling ops: what an integer runtime quantizes besides convolutions and linears.

An integer runtime (onnxruntime's QLinearAdd, QLinearGlobalAveragePool, QLinearAveragePool) reads quantized
operands, so the `deploy` protocol quantizes the inputs of residual additions and of average pooling as it
quantizes those of convolutions. `Add` is the module a functional `a + b` becomes (`dfq.quant.graph`), so
that it can be swapped for `QuantAdd` like any layer.
"""

from __future__ import annotations

import torch
from torch import nn

from dfq.quant.modules import LayerQuantSpec
from dfq.quant.quantizer import TensorQuantizer


class Add(nn.Module):
    """`a + b` as a module (a tensor-tensor addition found in a model's forward code)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


def _input_quantizer(qspec: LayerQuantSpec, device) -> TensorQuantizer:
    return TensorQuantizer(qspec.input, observer=qspec.input_observer, observer_kwargs=dict(qspec.input_observer_kwargs),
                           learnable=qspec.learnable, device=device)


class QuantAdd(Add):
    """`a + b` with both operands fake-quantized (`input_quantizer` for a, `second_input_quantizer` for b);
    the sum is quantized by whatever consumes it."""

    def __init__(self, qspec: LayerQuantSpec, device=None) -> None:
        super().__init__()
        if qspec.input is None:
            raise ValueError("QuantAdd needs an input spec")
        self.qspec = qspec
        self.input_quantizer = _input_quantizer(qspec, device)
        self.second_input_quantizer = _input_quantizer(qspec, device)

    @classmethod
    def from_float(cls, module: Add, qspec: LayerQuantSpec, device=None) -> "QuantAdd":
        return cls(qspec, device).train(module.training)

    def to_float(self) -> Add:
        return Add().train(self.training)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.input_quantizer(a) + self.second_input_quantizer(b)


class _QuantPoolMixin:
    def _init_quantizer(self, qspec: LayerQuantSpec, device) -> None:
        if qspec.input is None:
            raise ValueError(f"{type(self).__name__} needs an input spec")
        self.qspec = qspec
        self.input_quantizer = _input_quantizer(qspec, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_quantizer(x))  # type: ignore[misc]


class QuantAdaptiveAvgPool2d(_QuantPoolMixin, nn.AdaptiveAvgPool2d):
    """AdaptiveAvgPool2d of a fake-quantized input."""

    def __init__(self, output_size, qspec: LayerQuantSpec, device=None) -> None:
        super().__init__(output_size)
        self._init_quantizer(qspec, device)

    @classmethod
    def from_float(cls, pool: nn.AdaptiveAvgPool2d, qspec: LayerQuantSpec, device=None) -> "QuantAdaptiveAvgPool2d":
        return cls(pool.output_size, qspec, device).train(pool.training)

    def to_float(self) -> nn.AdaptiveAvgPool2d:
        return nn.AdaptiveAvgPool2d(self.output_size).train(self.training)


class QuantAvgPool2d(_QuantPoolMixin, nn.AvgPool2d):
    """AvgPool2d of a fake-quantized input."""

    def __init__(self, pool: nn.AvgPool2d, qspec: LayerQuantSpec, device=None) -> None:
        super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad,
                         pool.divisor_override)
        self._init_quantizer(qspec, device)

    @classmethod
    def from_float(cls, pool: nn.AvgPool2d, qspec: LayerQuantSpec, device=None) -> "QuantAvgPool2d":
        return cls(pool, qspec, device).train(pool.training)

    def to_float(self) -> nn.AvgPool2d:
        return nn.AvgPool2d(self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                            self.divisor_override).train(self.training)


QUANT_OPS: dict[type[nn.Module], type[nn.Module]] = {
    Add: QuantAdd, nn.AdaptiveAvgPool2d: QuantAdaptiveAvgPool2d, nn.AvgPool2d: QuantAvgPool2d,
}
"""Float op modules and their quantized counterparts (inputs quantized, no weights)."""
