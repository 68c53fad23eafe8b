"""Which layers of a model get quantized: matched by what they compute, not by their exact type.

A subclass of nn.Conv2d / nn.Linear that keeps its parent's forward computes a plain convolution / linear map and
is quantized as one. A subclass with its own forward is quantized only where gznq knows what that forward
computes (`KNOWN_VARIANTS`: timm's Linear, its TF-"same"-padding and weight-standardized convolutions); any other
is left in float, with the reason, in the match, the quantization summary and a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfq.quant.same_pad import SamePadConv2d


def _standardized(conv: nn.Conv2d, gain: torch.Tensor | None = None) -> torch.Tensor:
    """The weight a weight-standardized convolution uses: each output channel at zero mean and unit variance
    (eps inside the root), times the per-channel gain where the layer has one."""
    w = conv.weight
    flat = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, weight=gain, training=True, momentum=0.0,
                        eps=conv.eps)
    return flat.reshape_as(w)


def _scaled_standardized(conv: nn.Conv2d) -> torch.Tensor:
    return _standardized(conv, (conv.gain * conv.scale).view(-1))


@dataclass(frozen=True)
class Variant:
    """How a Conv2d/Linear subclass with its own forward computes: the plain layer on `weight(module)` (the
    module's own weight when None), after TF-style "same" padding of its input where `same_padding(module)`."""

    weight: Callable[[nn.Module], torch.Tensor] | None = None
    same_padding: Callable[[nn.Module], bool] | None = None


# Keyed by "module.QualName" so that timm need not be imported to know them.
KNOWN_VARIANTS: dict[str, Variant] = {
    "timm.layers.linear.Linear": Variant(),  # casts dtypes under TorchScript only
    "timm.layers.conv2d_same.Conv2dSame": Variant(same_padding=lambda m: True),
    "timm.layers.std_conv.StdConv2d": Variant(weight=_standardized),
    "timm.layers.std_conv.StdConv2dSame": Variant(weight=_standardized, same_padding=lambda m: bool(m.same_pad)),
    "timm.layers.std_conv.ScaledStdConv2d": Variant(weight=_scaled_standardized),
    "timm.layers.std_conv.ScaledStdConv2dSame": Variant(weight=_scaled_standardized,
                                                        same_padding=lambda m: bool(m.same_pad)),
}


def type_key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True)
class LayerMatch:
    """One conv/linear of a model: the float type it computes as (`base`), and whether it is quantized; when not,
    `reason` says why."""

    name: str
    module: nn.Module
    base: type[nn.Module]
    variant: Variant | None  # how a subclass with its own forward computes; None for a plain one
    reason: str | None = None  # set when the layer cannot be quantized

    @property
    def quantizable(self) -> bool:
        return self.reason is None


def base_type(module: nn.Module, table: Mapping[type, type]) -> type | None:
    """The first class in `module`'s type hierarchy that `table` maps (Conv2d for a Conv2d subclass)."""
    return next((cls for cls in type(module).__mro__ if cls in table), None)


def computes_as_parent(module: nn.Module, base: type) -> bool:
    """Whether `module` keeps `base`'s computation: neither forward nor Conv2d's _conv_forward overridden."""
    cls = type(module)
    if cls.forward is not base.forward:
        return False
    return not isinstance(module, nn.Conv2d) or cls._conv_forward is nn.Conv2d._conv_forward


def match_layers(model: nn.Module, table: Mapping[type[nn.Module], type[nn.Module]]) -> list[LayerMatch]:
    """Every module of `model` that is an instance of a key of `table` (a float layer type), in registration
    order, with what it computes. Layers already quantized (instances of a value of `table`) are not listed."""
    quantized = tuple(table.values())
    matches = []
    for name, module in model.named_modules():
        if isinstance(module, quantized):
            continue
        base = base_type(module, table)
        if base is None:
            continue
        cls = type(module)
        if computes_as_parent(module, base):
            matches.append(LayerMatch(name, module, base, None))
        elif type_key(cls) in KNOWN_VARIANTS:
            matches.append(LayerMatch(name, module, base, KNOWN_VARIANTS[type_key(cls)]))
        else:
            matches.append(LayerMatch(
                name, module, base, None,
                reason=f"{cls.__name__} ({cls.__module__}) has its own forward, not known to compute a plain "
                       f"{base.__name__}"))
    return matches


def as_plain(match: LayerMatch) -> nn.Module:
    """The layer as its plain float type computing the same (the effective weight copied in); for a known
    variant with "same" padding, a `SamePadConv2d`."""
    module, variant = match.module, match.variant
    if variant is None:
        return module
    weight = variant.weight(module).detach() if variant.weight is not None else module.weight.detach()
    same = variant.same_padding is not None and variant.same_padding(module)
    if match.base is nn.Linear:
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device=weight.device, dtype=weight.dtype)
    else:
        cls = SamePadConv2d if same else nn.Conv2d
        plain = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                    padding=0 if same else module.padding, dilation=module.dilation, groups=module.groups,
                    bias=module.bias is not None, padding_mode=module.padding_mode, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if module.bias is not None:
            plain.bias.copy_(module.bias)
    return plain.train(module.training)


def plain_forward(module: nn.Module) -> bool:
    """Whether `module` computes as its Conv2d / Linear parent does (exporters rely on it)."""
    from dfq.quant.modules import QuantConv2d, QuantLinear  # modules imports this file's neighbours

    base = next((b for b in (QuantConv2d, QuantLinear, nn.Conv2d, nn.Linear) if isinstance(module, b)), None)
    return base is not None and computes_as_parent(module, base)
