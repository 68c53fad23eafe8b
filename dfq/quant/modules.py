"""Quantized layers: `QuantConv2d` and `QuantLinear`, each with a `weight_quantizer` and an `input_quantizer`.

They subclass their float counterparts, so weights, bias and hyperparameters stay where torch expects them;
`from_float` builds one from a float layer (copying its tensors) and `to_float` gives the float layer back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfq.quant.observers import QuantSpec
from dfq.quant.quantizer import TensorQuantizer
from dfq.quant.same_pad import SamePadConv2d, same_pad


@dataclass(frozen=True)
class LayerQuantSpec:
    """How one layer is quantized: its weight and input specs (None keeps that tensor in float), the
    observers that set their ranges, and whether the scales are learnable (LSQ)."""

    weight: QuantSpec | None
    input: QuantSpec | None
    weight_observer: str = "minmax"
    input_observer: str = "minmax"
    learnable: bool = False
    weight_observer_kwargs: tuple[tuple[str, object], ...] = ()
    input_observer_kwargs: tuple[tuple[str, object], ...] = ()
    # the bias on the int32 grid of input scale x weight scale, as an integer runtime adds it (QLinearConv)
    quantize_bias: bool = False


BIAS_LIMIT = 2**30  # int32 codes, with room left for the accumulator they are added to


def bias_codes(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int32 codes (as int64) of a bias on the grid `scale`, rounded in float64 and saturated at +-2^30: a
    channel with (almost) zero weights has a tiny scale, and a code near 2^31 would overflow the runtime's
    int32 accumulator (2^30 leaves room for any sum of 8-bit products a layer of under 16,000 inputs makes)."""
    return torch.round(bias.double() / scale.double()).clamp(-BIAS_LIMIT, BIAS_LIMIT).long()


class _QuantMixin:
    """Shared by the quantized layers: quantizer construction and the quantized operands."""

    def _init_quantizers(self, qspec: LayerQuantSpec) -> None:
        self.qspec = qspec
        self.weight_quantizer = None
        self.input_quantizer = None
        self.weight_rounding = None  # set only inside dfq.quant.adaround.adaround()
        if qspec.weight is not None:
            self.weight_quantizer = TensorQuantizer(
                qspec.weight, num_channels=self.weight.shape[0], observer=qspec.weight_observer,
                observer_kwargs=dict(qspec.weight_observer_kwargs), learnable=qspec.learnable,
                device=self.weight.device,
            )
        if qspec.input is not None:
            self.input_quantizer = TensorQuantizer(
                qspec.input, observer=qspec.input_observer, observer_kwargs=dict(qspec.input_observer_kwargs),
                learnable=qspec.learnable, device=self.weight.device,
            )

    def calibrate_weight(self) -> None:
        """Set the weight quantizer's range from the current weight with its observer."""
        if self.weight_quantizer is not None:
            self.weight_quantizer.observe(self.weight.detach())
            self.weight_quantizer.load_observed_range()

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_rounding is not None:
            return self.weight_rounding()
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def bias_scale(self) -> torch.Tensor | None:
        """The per-channel step of the bias's int32 grid (input scale x weight scale), where the layer's spec
        quantizes its bias and both quantizers have a range; None otherwise."""
        iq, wq = self.input_quantizer, self.weight_quantizer
        if not self.qspec.quantize_bias or self.bias is None or iq is None or wq is None:
            return None
        if not iq._ready or iq.calibrating or not iq.enabled or not wq._ready or not wq.enabled:
            return None
        return iq.scale.detach() * wq.scale.detach()

    def quantized_bias(self) -> torch.Tensor | None:
        """The bias as the layer adds it: on the int32 grid of `bias_scale` (straight-through), or as stored."""
        scale = self.bias_scale()
        if scale is None:
            return self.bias
        rounded = bias_codes(self.bias.detach(), scale).to(self.bias.dtype) * scale
        return rounded + (self.bias - self.bias.detach())  # exactly `rounded`, with the bias's gradient

    def _finish_from_float(self, float_module: nn.Module) -> None:
        with torch.no_grad():
            self.weight.copy_(float_module.weight)
            if self.bias is not None:
                self.bias.copy_(float_module.bias)
        self.train(float_module.training)
        self.calibrate_weight()


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """Conv2d whose input and weight are fake-quantized (weight per output channel, axis 0)."""

    def __init__(self, *args, qspec: LayerQuantSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(qspec)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, qspec: LayerQuantSpec) -> "QuantConv2d":
        """A quantized copy of `conv`. The weight range is set at once from the weight; the input range
        needs `dfq.calibrate`."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype, qspec=qspec,
        )
        new._finish_from_float(conv)
        return new

    def to_float(self) -> nn.Conv2d:
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        conv.load_state_dict({k: v for k, v in self.state_dict().items() if "quantizer" not in k})
        return conv.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.quantized_bias())


class QuantLinear(_QuantMixin, nn.Linear):
    """Linear whose input and weight are fake-quantized (weight per output row, axis 0)."""

    def __init__(self, *args, qspec: LayerQuantSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_quantizers(qspec)

    @classmethod
    def from_float(cls, linear: nn.Linear, qspec: LayerQuantSpec) -> "QuantLinear":
        """A quantized copy of `linear`; see `QuantConv2d.from_float`."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype, qspec=qspec)
        new._finish_from_float(linear)
        return new

    def to_float(self) -> nn.Linear:
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.load_state_dict({k: v for k, v in self.state_dict().items() if "quantizer" not in k})
        return linear.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.quantized_bias())


class QuantSamePadConv2d(QuantConv2d):
    """QuantConv2d with TensorFlow's "SAME" padding (timm's Conv2dSame), computed from each input's size."""

    def to_float(self) -> SamePadConv2d:
        conv = SamePadConv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride, padding=0,
            dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
            device=self.weight.device, dtype=self.weight.dtype,
        )
        conv.load_state_dict({k: v for k, v in self.state_dict().items() if "quantizer" not in k})
        return conv.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = same_pad(self.quantized_input(x), self.kernel_size, self.stride, self.dilation)  # zeros stay exact
        return self._conv_forward(x, self.quantized_weight(), self.quantized_bias())


QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear, SamePadConv2d: QuantSamePadConv2d}
"""The default table from float module types to their quantized counterparts."""
