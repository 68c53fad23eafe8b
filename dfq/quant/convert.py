"""`quantize_model`: swap a float model's Conv2d/Linear layers for quantized ones as a QuantConfig says."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

from dfq.quant.config import QuantConfig
from dfq.quant.fold import fold_batchnorm
from dfq.quant.graph import functional_ops_to_modules, tie_shared_inputs
from dfq.quant.matching import as_plain, base_type, match_layers
from dfq.quant.modules import QUANT_MODULES, LayerQuantSpec
from dfq.quant.observers import QuantSpec
from dfq.quant.ops import QUANT_OPS
from dfq.quant.same_pad import SamePadConv2d


def _check_patterns(config: QuantConfig, names: list[str]) -> None:
    for pattern in [*config.skip, *(o.pattern for o in config.overrides)]:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise ValueError(
                f"layer pattern {pattern!r} matches no quantizable layer; names look like "
                f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''} (fnmatch globs, e.g. 'layer1.*')"
            )


def _observer_kwargs(observer: str, config: QuantConfig) -> tuple[tuple[str, object], ...]:
    if observer == "percentile":
        return ("percentile", config.percentile), ("seed", config.observer_seed)
    return (("seed", config.observer_seed),) if observer == "mse" else ()


def layer_bits(config: QuantConfig, name: str, *, first: bool, last: bool) -> tuple[int, int]:
    """(weight bits, input bits) of one layer under `config`; input bits 0 means the input stays float."""
    w_bits, in_bits = config.w_bits, config.a_bits
    if first:
        w_bits = config.first_layer_bits or w_bits
        in_bits = config.input_bits
    if last and config.last_layer_bits is not None:
        w_bits = in_bits = config.last_layer_bits
    for o in config.overrides:
        if fnmatchcase(name, o.pattern):
            w_bits = o.w_bits if o.w_bits is not None else w_bits
            in_bits = o.a_bits if o.a_bits is not None else in_bits
    return w_bits, in_bits


def quantize_model(
    model: nn.Module,
    config: QuantConfig,
    *,
    module_map: Mapping[type[nn.Module], type[nn.Module]] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Return a fake-quantized copy of `model` (or, with inplace=True, `model` converted in place; use the
    returned object all the same: where `quantize_ops` rewrites the root module's own forward code, the
    returned model is a new object holding the converted layers).

    Layers are matched by what they compute (`dfq.quant.matching`): every instance of a type in `module_map`
    (default: Conv2d -> QuantConv2d, Linear -> QuantLinear) that keeps its parent's forward, or whose own forward
    is a known variant (timm's Linear, "same"-padded and weight-standardized convolutions: these become their
    plain equivalent first), is replaced, except the layers matching `config.skip`. A subclass with an unknown
    forward stays float, with a warning naming it (and the summary gives the reason). BN is then folded when the
    config says so. "First" and "last" are the first and last matched layers in module registration order.
    With `config.quantize_ops` (the deploy protocol), additions and adaptive pooling written as code become
    modules (`dfq.quant.graph.functional_ops_to_modules`), additions and average pools get quantized inputs
    at ops_bits (`dfq.quant.ops`), and the consumers of one tensor share one input quantizer. Weight ranges
    are set at once from the weights; input ranges need `calibrate` afterwards.

    Raises:
        ValueError: the model has no Conv2d/Linear layer, or a skip/override pattern matches no layer.
    """
    table = dict(module_map or QUANT_MODULES)
    model = model if inplace else copy.deepcopy(model)
    matches = match_layers(model, table)
    names = [m.name for m in matches]
    if not any(m.quantizable for m in matches):
        found = f" (found only: {'; '.join(m.reason for m in matches[:3])})" if matches else ""
        raise ValueError(
            f"{type(model).__name__} has no {' or '.join(t.__name__ for t in table if t is not SamePadConv2d)} layer "
            f"to quantize{found}"
        )
    _check_patterns(config, names)
    skipped = {n for n in names if any(fnmatchcase(n, p) for p in config.skip)}
    unasked = [m for m in matches if not m.quantizable and m.name not in skipped]
    if unasked:
        warnings.warn(f"{len(unasked)} conv/linear layer(s) stay in float: "
                      + "; ".join(f"{m.name}: {m.reason}" for m in unasked[:5]) + ("; ..." if len(unasked) > 5 else "")
                      + ". Add them to QuantConfig.skip to silence this, or pass a module_map entry for their type.",
                      stacklevel=2)
    for match in matches:  # known variants become the plain layer they compute as, before BN is folded into them
        if match.quantizable and match.variant is not None:
            model.set_submodule(match.name, as_plain(match))
    names = [m.name for m in matches]
    quantizable = {m.name for m in matches if m.quantizable}
    if config.fold_bn:
        fold_batchnorm(model)
    if config.quantize_ops:
        model, _ = functional_ops_to_modules(model)
    for i, name in enumerate(names):
        if name in skipped or name not in quantizable:
            continue
        w_bits, in_bits = layer_bits(config, name, first=i == 0, last=i == len(names) - 1)
        qspec = LayerQuantSpec(
            weight=QuantSpec(w_bits, symmetric=config.w_symmetric, axis=0),
            input=QuantSpec(in_bits, symmetric=config.a_symmetric) if in_bits else None,
            weight_observer=config.weight_observer,
            input_observer=config.act_observer,
            learnable=config.learnable,
            weight_observer_kwargs=_observer_kwargs(config.weight_observer, config),
            input_observer_kwargs=_observer_kwargs(config.act_observer, config),
            quantize_bias=bool(config.quantize_ops),
        )
        layer = model.get_submodule(name)
        model.set_submodule(name, table[base_type(layer, table)].from_float(layer, qspec))
    if config.quantize_ops:
        _quantize_ops(model, config)
        tie_shared_inputs(model)
    return model


def _quantize_ops(model: nn.Module, config: QuantConfig) -> None:
    """Swap additions and average pools for their quantized forms, inputs at ops_bits (a_bits where it is None;
    overrides apply)."""
    for name, module in list(model.named_modules()):
        if type(module) not in QUANT_OPS or any(fnmatchcase(name, p) for p in config.skip):
            continue
        in_bits = config.ops_bits or config.a_bits
        for o in config.overrides:
            if fnmatchcase(name, o.pattern) and o.a_bits is not None:
                in_bits = o.a_bits
        qspec = LayerQuantSpec(
            weight=None, input=QuantSpec(in_bits, symmetric=config.a_symmetric),
            input_observer=config.act_observer, learnable=config.learnable,
            input_observer_kwargs=_observer_kwargs(config.act_observer, config),
        )
        device = next((p.device for p in module.parameters()), None) or next(
            (p.device for p in model.parameters()), None)
        model.set_submodule(name, QUANT_OPS[type(module)].from_float(module, qspec, device))


def dequantize_model(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The float model back: every quantized layer and op replaced by its `to_float()` (BN stays folded;
    additions rewritten as modules stay modules)."""
    model = model if inplace else copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if hasattr(module, "to_float") and (hasattr(module, "weight_quantizer") or type(module) in QUANT_OPS.values()):
            model.set_submodule(name, module.to_float())
    return model
