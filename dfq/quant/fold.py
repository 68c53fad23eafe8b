"""Folding BatchNorm into the convolution that feeds it, as a deployed integer model does."""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfq.quant.matching import computes_as_parent
from dfq.quant.same_pad import SamePadConv2d


def _foldable(module) -> bool:
    """A convolution whose output is conv(x, weight) + bias (plain or "same"-padded), so that a BN after it folds
    into its weight and bias; a subclass computing otherwise may transform its weight."""
    if not isinstance(module, nn.Conv2d):
        return False
    return computes_as_parent(module, SamePadConv2d if isinstance(module, SamePadConv2d) else nn.Conv2d)


class _LeafTracer(fx.Tracer):
    """Keeps convolutions and every BatchNorm subclass (timm's BatchNormAct2d too) as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, _BatchNorm)) or super().is_leaf_module(m, qualname)


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BN name) for every Conv2d whose only consumer is a BatchNorm (a Conv2d subclass with its
    own forward only where it is a plain or "same"-padded convolution: another may transform its weight).

    The dataflow comes from a torch.fx trace. Models fx cannot trace fall back to module order: a Conv2d
    immediately followed, in the same parent, by a BN of matching width (with a warning, since module
    order need not be execution order).
    """
    modules = dict(model.named_modules())
    try:
        graph = _LeafTracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        warnings.warn(f"BN folding: torch.fx could not trace the model ({type(exc).__name__}); pairing by module order")
        return _pairs_by_order(model)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm) or not node.args:
            continue
        src = node.args[0]
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and _foldable(modules.get(src.target))
            and len(src.users) == 1
        ):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_by_order(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if _foldable(a) and isinstance(b, _BatchNorm) and b.num_features == a.out_channels:
                prefix = f"{parent_name}." if parent_name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def fold_conv_bn(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new Conv2d (with bias) equal to bn(conv(x)) in inference, using BN's running statistics.

    Raises:
        ValueError: the BN keeps no running statistics, or its width differs from the conv's output.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm width {bn.num_features} != conv output channels {conv.out_channels}")
    if not _foldable(conv):
        raise ValueError(f"cannot fold a BatchNorm into a {type(conv).__name__}: its forward is not a plain convolution")
    folded = (SamePadConv2d if isinstance(conv, SamePadConv2d) else nn.Conv2d)(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=True, padding_mode=conv.padding_mode,
        device=conv.weight.device, dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
        factor = gamma * inv_std  # (C_out,)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(factor)
        folded.weight.copy_((conv.weight.double() * factor.reshape(-1, 1, 1, 1)).to(conv.weight.dtype))
        folded.bias.copy_(((bias - bn.running_mean.double()) * factor + beta).to(conv.weight.dtype))
    return folded.train(conv.training)


def _bn_replacement(bn: _BatchNorm) -> nn.Module:
    # timm's BatchNormAct2d applies dropout and an activation after normalizing; those must stay.
    tail = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*tail) if tail else nn.Identity()


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every foldable BatchNorm into its convolution, in place: the conv becomes a folded conv with
    bias and the BN becomes an identity (or the activation it carried). Returns the folded pairs."""
    pairs = find_conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        model.set_submodule(conv_name, fold_conv_bn(conv, bn))
        model.set_submodule(bn_name, _bn_replacement(bn))
    return pairs
