"""The dataflow view of a model (torch.fx) that the `deploy` protocol and the ONNX export need.

- `functional_ops_to_modules`: tensor additions and adaptive average pooling written as code in a module's
  forward (`out += identity`, `F.adaptive_avg_pool2d(x, 1)`) become modules (`Add`, `nn.AdaptiveAvgPool2d`),
  so that `quantize_model` can quantize them like layers. Only the module whose code holds them is rewritten
  (as a torch.fx GraphModule with the same children under the same names), so state_dict keys, the nesting
  that reconstruction reads its blocks from, and every other module stay as they were.
- `tie_shared_inputs`: an integer runtime quantizes a tensor once, where it is made; a tensor read by several
  quantized consumers (a block's input, read by its first conv and by its residual addition) must be
  quantized the same way by all of them, so they are given one shared quantizer (per width: a consumer that
  reads it narrower requantizes the widest one's output).
- `trace`, `source_of`: the whole model's graph with quantized modules as leaves, and the producer of a
  tensor looking through ops that commute with quantization (identity, slicing, zero padding, max pooling,
  flattening), shared with the exporter.
"""

from __future__ import annotations

import operator
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from dfq.modes import restored
from dfq.quant.ops import Add

ADD_TARGETS = (operator.add, operator.iadd, torch.add)
# single-input ops with op(q(x)) == q(op(x)) for any quantizer q whose grid holds 0 (asymmetric, or symmetric)
PASS_MODULES = (nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool2d)
PASS_FUNCTIONS = {"flatten", "dropout", "max_pool2d", "_max_pool2d", "max_pool2d_with_indices", "getitem", "pad",
                  "reshape"}
PASS_METHODS = {"flatten", "view", "reshape", "contiguous"}
_SHAPE_OPS = {"size", "dim"}


class _ModeDependent(Exception):
    pass


class _ShallowTracer(fx.Tracer):
    """Traces only the root's own forward code: every submodule is a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_tensor_node(node) -> bool:
    """A node that is (almost surely) a tensor, not a shape or a Python number."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method":
        return node.target not in _SHAPE_OPS
    if node.op == "call_function" and node.target is getattr:
        return False
    if node.op == "call_function" and node.target is operator.getitem:
        return _is_tensor_node(node.args[0])
    if node.op == "call_function" and getattr(node.target, "__module__", None) == "_operator":
        return any(_is_tensor_node(a) for a in node.args)  # arithmetic on shapes stays a number
    return node.op in ("placeholder", "call_module", "call_function", "get_attr")


def _is_functional_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in ADD_TARGETS:
        ok = len(node.args) == 2 and not node.kwargs
    elif node.op == "call_method" and node.target in ("add", "add_"):
        ok = len(node.args) == 2 and not node.kwargs
    else:
        return False
    return ok and all(_is_tensor_node(a) for a in node.args)


def _is_functional_pool(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is F.adaptive_avg_pool2d and not node.kwargs


def _rewrite_one(module: nn.Module) -> nn.Module | None:
    """`module` as a GraphModule whose functional adds and adaptive pools call new modules, or None when its
    forward has none (or cannot be traced)."""
    with restored(module):  # torch.fx writes `self.training` into the graph as the constant it was
        graph = _ShallowTracer().trace(module.eval())
        train_code = _ShallowTracer().trace(module.train()).python_code("self").src
    targets = [n for n in graph.nodes if _is_functional_add(n) or _is_functional_pool(n)]
    if not targets:
        return None
    if graph.python_code("self").src != train_code:
        raise _ModeDependent("its forward code depends on train/eval mode")
    names = set(dict(module.named_children()))
    for node in targets:
        base = "add" if _is_functional_add(node) else "pool"
        index = 0
        while f"{base}{index}" in names:
            index += 1
        name = f"{base}{index}"
        names.add(name)
        if base == "add":
            module.add_module(name, Add())
            args = tuple(node.args)
        else:
            module.add_module(name, nn.AdaptiveAvgPool2d(node.args[1]))
            args = (node.args[0],)
        with graph.inserting_after(node):
            new = graph.call_module(name, args)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.lint()
    rewritten = fx.GraphModule(module, graph, class_name=type(module).__name__)
    return rewritten.train(module.training)


def functional_ops_to_modules(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Rewrite, in place, every module whose own forward adds two tensors or calls F.adaptive_avg_pool2d
    (see the module docstring). Returns (the model, which is a new object only when the root itself was
    rewritten; the names of the rewritten modules, "" for the root). Modules torch.fx cannot trace are left
    as they are, with one warning naming them: their additions stay in float."""
    from dfq.quant.modules import QUANT_MODULES

    leaf_types = (*QUANT_MODULES, *PASS_MODULES, nn.Sequential, nn.ModuleList, nn.ModuleDict)
    candidates = [(n, m) for n, m in model.named_modules()
                  if next(m.children(), None) is not None and not isinstance(m, leaf_types)
                  and not isinstance(m, fx.GraphModule)]
    rewritten, untraceable = [], []
    for name, module in reversed(candidates):  # children before their parents
        try:
            new = _rewrite_one(module)
        except _ModeDependent as exc:
            untraceable.append(f"{name or type(module).__name__} ({exc})")
            continue
        except Exception as exc:  # fx raises many types on Python it cannot trace
            untraceable.append(f"{name or type(module).__name__} ({type(exc).__name__})")
            continue
        if new is None:
            continue
        rewritten.append(name)
        if name:
            model.set_submodule(name, new)
        else:
            model = new
    if untraceable:
        warnings.warn("torch.fx could not rewrite " + ", ".join(untraceable[:5])
                      + ("..." if len(untraceable) > 5 else "")
                      + ": additions or pooling written in their forward code stay in float")
    return model, rewritten


class QuantLeafTracer(fx.Tracer):
    """Traces a whole model down to its quantized modules and torch.nn layers."""

    def __init__(self, leaves: tuple[type, ...]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.Graph:
    """The model's dataflow graph, quantized layers and ops as single nodes."""
    from dfq.quant.modules import QuantConv2d, QuantLinear
    from dfq.quant.ops import QUANT_OPS

    return QuantLeafTracer((QuantConv2d, QuantLinear, *QUANT_OPS.values(), *QUANT_OPS)).trace(model)


def passes_quantization(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` is a single-input op that commutes with quantization (its output is quantized exactly
    when its input is)."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), PASS_MODULES)
    if node.op == "call_method":
        return node.target in PASS_METHODS
    if node.op != "call_function":
        return False
    name = getattr(node.target, "__name__", "")
    if name == "pad":
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and not value
    return name in PASS_FUNCTIONS


def source_of(node, modules: dict[str, nn.Module]):
    """The tensor `node` reads, looking back through ops that commute with quantization."""
    while isinstance(node, fx.Node) and passes_quantization(node, modules) and node.args:
        node = node.args[0]
    return node


QUANTIZED_OPERANDS = {"input_quantizer": 0, "second_input_quantizer": 1}


def quantized_operands(module: nn.Module) -> list[tuple[int, str]]:
    """(argument index, quantizer attribute) of each quantized operand of a quantized module."""
    return [(i, attr) for attr, i in QUANTIZED_OPERANDS.items() if getattr(module, attr, None) is not None]


def tie_shared_inputs(model: nn.Module) -> int:
    """Give the quantized consumers of one tensor one shared input quantizer per width, in place. Where they
    read it at different widths, the narrower quantizers requantize what the widest makes (`set_source`), as
    an integer runtime that holds the tensor once at the widest width does. Returns how many quantizers were
    replaced. A model torch.fx cannot trace is left untied, with a warning."""
    try:
        graph = trace(model)
    except Exception as exc:  # fx raises many types on Python it cannot trace
        warnings.warn(f"torch.fx could not trace the model ({type(exc).__name__}): the quantizers of tensors read "
                      "by several layers are not shared, so the student may differ from an integer runtime")
        return 0
    modules = dict(model.named_modules())
    groups: dict[object, list[tuple[nn.Module, str]]] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = modules[node.target]
        for index, attr in quantized_operands(module):
            if index < len(node.args):
                groups.setdefault(source_of(node.args[index], modules), []).append((module, attr))
    replaced = 0
    for consumers in groups.values():
        by_bits: dict[int, object] = {}
        for module, attr in consumers:
            by_bits.setdefault(getattr(module, attr).spec.bits, getattr(module, attr))
        widest = by_bits[max(by_bits)]
        for quantizer in by_bits.values():
            quantizer.set_source(None if quantizer is widest else widest)
        for module, attr in consumers:
            shared = by_bits[getattr(module, attr).spec.bits]
            if getattr(module, attr) is not shared:
                setattr(module, attr, shared)
                replaced += 1
    return replaced
