"""`export_onnx`: a `deploy` student as a QDQ ONNX model that onnxruntime runs with integer kernels.

The graph is written node by node from the student's torch.fx trace (`dfq.quant.graph.trace`), so every
quantizer becomes exactly one QuantizeLinear/DequantizeLinear pair with the student's own scale and zero
point: weights as int8 initializers (per output channel, symmetric, zero point 0: QLinearConv needs equal
zero points), biases as int32 at the input scale times the weight scale (what QLinearConv adds), activations
as uint8 (asymmetric) or int8 (symmetric signed) at the tensor where they are made. Widths below 8 bits live
on the 8-bit grid: weight codes are exact, and an activation's narrower range is an integer Clip between its
QuantizeLinear and DequantizeLinear, which clamps exactly as the student's fake quantization does. onnxruntime
then fuses DequantizeLinear -> Conv/Gemm/Add/GlobalAveragePool -> QuantizeLinear into QLinearConv, QGemm,
QLinearAdd and QLinearGlobalAveragePool (`dfq.export.check.integer_kernels` counts them).

The input is the normalized image, as the student takes it; the input normalization, image size and the
student's QuantConfig are written to the model's metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfq.io import atomic_write
from dfq.models.spec import InputSpec
from dfq.modes import restored
from dfq.quant.graph import quantized_operands, source_of, trace
from dfq.quant.matching import plain_forward
from dfq.quant.modules import QuantConv2d, QuantLinear, bias_codes
from dfq.quant.ops import QuantAdaptiveAvgPool2d, QuantAdd, QuantAvgPool2d
from dfq.quant.primitives import quantize
from dfq.quant.quantizer import TensorQuantizer

OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis)
OPSET_INT4 = 21  # int4 initializers
IR_VERSION = {OPSET: 7, OPSET_INT4: 10}


class ExportError(ValueError):
    """The student holds something the exporter cannot write as an integer QDQ graph."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install -e '.[export]' (from the repository root)") from None
    return onnx


class _Writer:
    """Accumulates ONNX nodes and initializers with unique names."""

    def __init__(self, pack_int4: bool = False) -> None:
        self.onnx = _onnx()
        self.pack_int4 = pack_int4
        self.packed = 0  # weights written as int4
        self.nodes: list = []
        self.initializers: list = []
        self.names: set[str] = set()

    def name(self, base: str) -> str:
        base = base.replace(".", "_") or "t"
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def int4(self, base: str, array: np.ndarray) -> str:
        """An INT4 initializer (two values a byte) of integers in [-8, 7]."""
        name = self.name(base)
        nibbles = (np.asarray(array).astype(np.int8).ravel() & 0x0F).astype(np.uint8)
        if len(nibbles) % 2:
            nibbles = np.append(nibbles, np.uint8(0))
        packed = (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)  # first value in the low nibble
        self.initializers.append(self.onnx.helper.make_tensor(name, self.onnx.TensorProto.INT4, array.shape,
                                                              packed.tobytes(), raw=True))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], name=self.name(f"{base}_{op}"), **attrs))
        return out


def _storage(qmin: int, qmax: int) -> tuple[type, int, int]:
    """numpy storage type and its full range for integer codes in [qmin, qmax]."""
    if qmin >= 0 and qmax <= 255:
        return np.uint8, 0, 255
    if qmin >= -128 and qmax <= 127:
        return np.int8, -128, 127
    raise ExportError(f"integer range [{qmin}, {qmax}] does not fit 8 bits")


def _quantize_dequantize(w: _Writer, tensor: str, q: TensorQuantizer, base: str) -> str:
    """QuantizeLinear -> (integer Clip for ranges narrower than the storage) -> DequantizeLinear of one
    per-tensor activation quantizer; returns the dequantized tensor's name."""
    if q.spec.axis is not None:
        raise ExportError(f"{base}: per-channel activation quantizers are not exportable")
    if not q._ready:
        raise ExportError(f"{base}: the quantizer has no range; calibrate the student before exporting it")
    dtype, lo, hi = _storage(q._qmin, q._qmax)
    scale = w.const(f"{base}_scale", np.array(float(q.scale.detach()), dtype=np.float32))
    zero = w.const(f"{base}_zero_point", np.array(int(q.zero_point), dtype=dtype))
    codes = w.node("QuantizeLinear", [tensor, scale, zero], f"{base}_q")
    if (q._qmin, q._qmax) != (lo, hi):
        codes = w.node("Clip", [codes, w.const(f"{base}_qmin", np.array(q._qmin, dtype=dtype)),
                                w.const(f"{base}_qmax", np.array(q._qmax, dtype=dtype))], f"{base}_clip")
    return w.node("DequantizeLinear", [codes, scale, zero], f"{base}_dq")


def _weight(w: _Writer, layer: nn.Module, name: str) -> str:
    """The dequantized weight of a quantized layer (int8 codes, per-channel scales), or the float weight."""
    q = getattr(layer, "weight_quantizer", None)
    weight = layer.weight.detach().float().cpu()
    if q is None:
        return w.const(f"{name}_weight", weight.numpy())
    if q.spec.axis != 0 or bool((q.zero_point != 0).any()):
        raise ExportError(f"{name}: weights must be symmetric per output channel (zero point 0) for integer "
                          "convolutions; quantize with the deploy protocol (or w_symmetric=True)")
    scale = q.scale.detach().float().cpu()
    # reconstruction leaves weights on the grid; others round to nearest, as the student's quantizer does
    codes = quantize(weight, scale, q.zero_point.cpu(), q._qmin, q._qmax, axis=0)
    scales = w.const(f"{name}_weight_scale", scale.numpy().astype(np.float32))
    if w.pack_int4 and q._qmin >= -8 and q._qmax <= 7:
        w.packed += 1
        ints = w.int4(f"{name}_weight_int", codes.numpy())
        zeros = w.int4(f"{name}_weight_zero_point", np.zeros(len(scale), dtype=np.int8))
        return w.node("DequantizeLinear", [ints, scales, zeros], f"{name}_weight", axis=0)
    dtype, _, _ = _storage(q._qmin, q._qmax)
    ints = w.const(f"{name}_weight_int", codes.numpy().astype(dtype))
    zeros = w.const(f"{name}_weight_zero_point", np.zeros(len(scale), dtype=dtype))
    return w.node("DequantizeLinear", [ints, scales, zeros], f"{name}_weight", axis=0)


def _bias(w: _Writer, layer: nn.Module, name: str) -> list[str]:
    """The bias: int32 on the grid the student adds it on (`bias_scale`), else float."""
    if layer.bias is None:
        return []
    scale = layer.bias_scale() if hasattr(layer, "bias_scale") else None
    if scale is None:
        return [w.const(f"{name}_bias", layer.bias.detach().float().cpu().numpy())]
    scale = scale.float().cpu()
    ints = bias_codes(layer.bias.detach().cpu(), scale)
    return [w.node("DequantizeLinear", [w.const(f"{name}_bias_int", ints.numpy().astype(np.int32)),
                                        w.const(f"{name}_bias_scale", scale.numpy().astype(np.float32)),
                                        w.const(f"{name}_bias_zero_point", np.zeros(len(scale), np.int32))],
                   f"{name}_bias", axis=0)]


def _conv(w: _Writer, layer: nn.Conv2d, name: str, x: str) -> str:
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        raise ExportError(f"{name}: only numeric zero padding is exportable (padding={layer.padding!r}, "
                          f"padding_mode={layer.padding_mode!r})")
    weight = _weight(w, layer, name)
    inputs = [x, weight, *_bias(w, layer, name)]
    ph, pw = layer.padding
    return w.node("Conv", inputs, name, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                  pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.groups)


def _linear(w: _Writer, layer: nn.Linear, name: str, x: str) -> str:
    weight = _weight(w, layer, name)
    return w.node("Gemm", [x, weight, *_bias(w, layer, name)], name, transB=1)


def _slice(w: _Writer, x: str, index, name: str) -> str:
    index = index if isinstance(index, tuple) else (index,)
    if not all(isinstance(i, slice) for i in index):
        raise ExportError(f"{name}: only slicing with ':' on every indexed axis is exportable, got {index!r}")
    starts, ends, axes, steps = [], [], [], []
    for axis, s in enumerate(index):
        if s == slice(None):
            continue
        starts.append(s.start or 0)
        ends.append(s.stop if s.stop is not None else np.iinfo(np.int64).max)
        axes.append(axis)
        steps.append(s.step or 1)
    if not axes:
        return x
    arr = [np.array(v, dtype=np.int64) for v in (starts, ends, axes, steps)]
    return w.node("Slice", [x, *[w.const(f"{name}_{k}", a) for k, a in zip(("starts", "ends", "axes", "steps"), arr)]],
                  name)


def _pad(w: _Writer, x: str, pad, name: str) -> str:
    pad = list(pad)
    if len(pad) % 2 or len(pad) > 8:
        raise ExportError(f"{name}: pad list {pad} is not exportable (pairs for at most the 4 axes of an image batch)")
    pairs = len(pad) // 2  # torch: (last_begin, last_end, second_last_begin, ...)
    begins = [0] * (4 - pairs) + [pad[2 * i] for i in reversed(range(pairs))]
    ends = [0] * (4 - pairs) + [pad[2 * i + 1] for i in reversed(range(pairs))]
    return w.node("Pad", [x, w.const(f"{name}_pads", np.array(begins + ends, dtype=np.int64))], name, mode="constant")


def _flatten_axis(node: fx.Node) -> int:
    """The start axis of a flatten-like call that keeps the leading (batch) axes; raises otherwise."""
    args = list(node.args[1:])
    if node.target in ("view", "reshape") or getattr(node.target, "__name__", "") == "reshape":
        shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        if (len(shape) == 2 and shape[1] == -1 and isinstance(shape[0], fx.Node)
                and shape[0].op == "call_method" and shape[0].target == "size" and shape[0].args[1:] == (0,)):
            return 1
        raise ExportError(f"{node.name}: only x.{node.target}(x.size(0), -1) reshapes are exportable, got {shape}")
    start = node.kwargs.get("start_dim", args[0] if args else 0)
    end = node.kwargs.get("end_dim", args[1] if len(args) > 1 else -1)
    if end != -1 or start != 1:
        raise ExportError(f"{node.name}: only flattening from dim 1 to the last is exportable (ONNX Flatten makes "
                          f"2-D tensors), got start_dim={start}, end_dim={end}")
    return 1


FLOAT_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6"}
_FUNCTION_NAMES = {"relu": "relu", "relu_": "relu", "relu6": "relu6", "flatten": "flatten", "getitem": "getitem",
                   "pad": "pad", "add": "add", "iadd": "add", "adaptive_avg_pool2d": "gap", "dropout": "identity",
                   "reshape": "flatten"}
_METHOD_NAMES = {"relu": "relu", "relu_": "relu", "flatten": "flatten", "view": "flatten", "reshape": "flatten",
                 "contiguous": "identity", "add": "add", "add_": "add", "size": "size"}


def _activation(w: _Writer, kind: str, x: str, name: str, q_out: TensorQuantizer | None = None) -> str:
    """Relu, or Clip(0, 6) for relu6. A relu6 whose output is quantized to a range inside [0, 6] is written as
    Relu: the quantizer's integer clamp already caps it at or below 6, and onnxruntime folds a Relu (not a
    Clip whose range is narrower than the 8-bit storage) into the QuantizeLinear after it."""
    if kind == "relu6" and q_out is not None and q_out._ready:
        lo, hi = q_out.range()
        if float(lo) >= 0 and float(hi) <= 6:
            kind = "relu"
    if kind == "relu":
        return w.node("Relu", [x], name)
    return w.node("Clip", [x, w.const(f"{name}_min", np.array(0, np.float32)),
                           w.const(f"{name}_max", np.array(6, np.float32))], name)


def build_onnx(student: nn.Module, spec: InputSpec, *, metadata: dict | None = None, pack_int4: bool = False):
    """The ONNX ModelProto of a calibrated `deploy` student (see the module docstring). With `pack_int4`,
    weights of 4 bits and fewer are written as INT4 initializers (opset 21): half the bytes, but onnxruntime
    (1.32 measured) runs those convolutions in float on the dequantized weights instead of fusing them.

    Raises:
        ExportError: an op the exporter does not know, BatchNorm left unfolded, asymmetric weights, an
            uncalibrated quantizer, or a model torch.fx cannot trace; each names the layer and the fix.
    """
    onnx = _onnx()
    try:
        graph = trace(student)
    except Exception as exc:  # fx raises many types on Python it cannot trace
        raise ExportError(f"torch.fx could not trace the student ({type(exc).__name__}: {exc}); the exporter "
                          "writes the graph from the trace") from None
    modules = dict(student.named_modules())
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], _BatchNorm):
            raise ExportError(f"{node.target}: BatchNorm is not folded; export a student of the deploy protocol "
                              "(BN folded into its convolutions)")
    w = _Writer(pack_int4)

    # where each quantized operand's tensor is made: quantize there, once (onnxruntime fuses it into its maker)
    quant_at: dict[fx.Node, TensorQuantizer] = {}
    on_path: set[fx.Node] = set()  # ops between such a tensor and a quantized layer reading it
    quantized_reads: set[tuple[fx.Node, fx.Node]] = set()  # (reader, node) read through a quantizer
    for node in graph.nodes:
        if node.op == "call_module":
            for index, attr in quantized_operands(modules[node.target]):
                arg = node.args[index]
                q = getattr(modules[node.target], attr)
                if not q.enabled:
                    raise ExportError(f"{node.target}.{attr} is disabled; an integer runtime quantizes every input of "
                                      "a quantized layer: enable it (or skip the layer) before exporting")
                quant_at.setdefault(source_of(arg, modules), q.source or q)
                quantized_reads.add((node, arg))
                reader_node = node
                while arg is not source_of(arg, modules):
                    on_path.add(arg)
                    quantized_reads.add((reader_node, arg))
                    reader_node, arg = arg, arg.args[0]
                quantized_reads.add((reader_node, arg))

    # which nodes something reads in float (not through a quantizer), directly or through an on-path op's
    # float twin; decided from the output backwards
    read_in_float: set[fx.Node] = set()
    for node in reversed(list(graph.nodes)):
        if any((user, node) not in quantized_reads or (user in on_path and user in read_in_float)
               for user in node.users):
            read_in_float.add(node)

    values: dict[fx.Node, str] = {}  # float value of each node (where something reads it in float)
    dequantized: dict[fx.Node, str] = {}  # the quantized-dequantized value, where a tensor is quantized
    path_values: dict[fx.Node, str] = {}  # values of on-path ops, computed from quantized inputs

    def operand(node: fx.Node, q: TensorQuantizer, base: str) -> str:
        """The value a quantized layer reads through `q`: the tensor as quantized where it is made (by q, or
        by the wider quantizer q requantizes), then, for a narrower q, requantized."""
        source, held_by = source_of(node, modules), q.source or q
        if quant_at.get(source) is not held_by:
            raise ExportError(f"{base}: {source} is read by quantized layers with different quantizers; an integer "
                              "runtime quantizes a tensor once: re-quantize the student with this version's deploy "
                              "protocol (train.py quantize)")
        if source is node or path_values[node] == dequantized[source]:  # nothing, or only identities, between
            value = dequantized[source]
        else:  # ops between the source and here kept the grid; onnxruntime needs the pair again to see integers
            value = requantized(path_values[node], held_by, f"{node.name}_q")
        return value if q.source is None else requantized(value, q, f"{base}_requant")

    pairs: dict[tuple[str, int], str] = {}

    def requantized(tensor: str, q: TensorQuantizer, base: str) -> str:
        """One QuantizeLinear/DequantizeLinear pair per tensor and quantizer, shared by all its readers (a
        second pair on the same tensor would keep onnxruntime from fusing the op that makes it)."""
        key = (tensor, id(q))
        if key not in pairs:
            pairs[key] = _quantize_dequantize(w, tensor, q, base)
        return pairs[key]

    def float_reader(node) -> str:
        return values[node]

    def path_reader(node) -> str:
        return path_values[node] if node in path_values else dequantized[node]

    def emit(node: fx.Node, read, q_out) -> str | None:
        if node.op == "call_module":
            return _module(w, modules[node.target], node, node.name, read, operand, q_out)
        if node.op in ("call_function", "call_method"):
            return _function(w, node, node.name, read, q_out)
        raise ExportError(f"{node.name}: {node.op} nodes ({node.target}) are not exportable")

    graph_input = graph_output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if graph_input is not None:
                raise ExportError("the exporter takes models with one input")
            graph_input = values[node] = w.name("input")
        elif node.op == "output":
            graph_output = node.args[0]
            if not isinstance(graph_output, fx.Node):
                raise ExportError("the exporter takes models with one tensor output")
            continue
        else:
            floats = node in read_in_float
            if node in on_path:
                path_values[node] = emit(node, path_reader, None)
            if floats or node not in on_path:
                # a relu6 may become a Relu only where its value is read through the quantizer alone
                values[node] = emit(node, float_reader, None if floats else quant_at.get(node))
        if node in quant_at and values.get(node) is not None:
            dequantized[node] = _quantize_dequantize(w, values[node], quant_at[node], node.name)
    if graph_input is None or graph_output is None:
        raise ExportError("the traced student has no input or no output")

    helper = onnx.helper
    c, h = spec.channels, spec.image_size
    graph_proto = helper.make_graph(
        w.nodes, "gznq_student",
        [helper.make_tensor_value_info(graph_input, onnx.TensorProto.FLOAT, ["batch", c, h, h])],
        [helper.make_tensor_value_info(values[graph_output], onnx.TensorProto.FLOAT, ["batch", None])],
        initializer=w.initializers,
    )
    opset = OPSET_INT4 if w.packed else OPSET
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", opset)], producer_name="gznq")
    model.ir_version = IR_VERSION[opset]  # the oldest IR that holds the opset, so older runtimes load it
    meta = {"input_spec": dataclasses.asdict(spec), "input": "normalized image, (x - mean) / std",
            **(metadata or {})}
    helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    onnx.checker.check_model(model)
    return model


def _module(w, module, node, name, read, operand, q_out) -> str:
    if isinstance(module, (QuantConv2d, QuantLinear, nn.Conv2d, nn.Linear)):
        if not plain_forward(module):
            raise ExportError(f"{node.target}: a {type(module).__name__} is not a plain convolution/linear layer "
                              "(its own forward, e.g. input-dependent \"same\" padding); the exporter writes "
                              "only plain ones")
        q = getattr(module, "input_quantizer", None)
        x = operand(node.args[0], q, name) if q is not None else read(node.args[0])
        build = _conv if isinstance(module, nn.Conv2d) else _linear
        return build(w, module, node.target, x)
    if isinstance(module, QuantAdd):
        return w.node("Add", [operand(node.args[0], module.input_quantizer, f"{name}_a"),
                              operand(node.args[1], module.second_input_quantizer, f"{name}_b")], name)
    if isinstance(module, (QuantAdaptiveAvgPool2d, nn.AdaptiveAvgPool2d)):
        size = module.output_size
        if size not in (1, (1, 1), [1, 1]):
            raise ExportError(f"{node.target}: adaptive pooling to {size} is not exportable (only to 1x1)")
        x = operand(node.args[0], module.input_quantizer, name) if isinstance(module, QuantAdaptiveAvgPool2d) \
            else read(node.args[0])
        return w.node("GlobalAveragePool", [x], name)
    if isinstance(module, (QuantAvgPool2d, nn.AvgPool2d)):
        x = operand(node.args[0], module.input_quantizer, name) if isinstance(module, QuantAvgPool2d) \
            else read(node.args[0])
        k, s, p = (module.kernel_size, module.stride, module.padding)
        k, s, p = [(v, v) if isinstance(v, int) else tuple(v) for v in (k, s, p)]
        if module.divisor_override:
            raise ExportError(f"{node.target}: AvgPool2d with divisor_override is not exportable")
        return w.node("AveragePool", [x], name, kernel_shape=list(k), strides=list(s), pads=[*p, *p],
                      ceil_mode=int(module.ceil_mode), count_include_pad=int(module.count_include_pad))
    if isinstance(module, nn.MaxPool2d):
        k, s, p, d = [(v, v) if isinstance(v, int) else tuple(v)
                      for v in (module.kernel_size, module.stride, module.padding, module.dilation)]
        if module.return_indices:
            raise ExportError(f"{node.target}: MaxPool2d with return_indices is not exportable")
        return w.node("MaxPool", [read(node.args[0])], name, kernel_shape=list(k), strides=list(s), pads=[*p, *p],
                      dilations=list(d), ceil_mode=int(module.ceil_mode))
    if type(module) in FLOAT_ACTIVATIONS:
        return _activation(w, FLOAT_ACTIVATIONS[type(module)], read(node.args[0]), name, q_out)
    if isinstance(module, nn.Hardtanh) and (module.min_val, module.max_val) == (0.0, 6.0):
        return _activation(w, "relu6", read(node.args[0]), name, q_out)
    if isinstance(module, (nn.Identity, nn.Dropout)):
        return read(node.args[0])
    if isinstance(module, nn.Flatten):
        if module.end_dim != -1 or module.start_dim != 1:
            raise ExportError(f"{node.target}: only Flatten from dim 1 to the last is exportable (ONNX Flatten "
                              "makes 2-D tensors)")
        return w.node("Flatten", [read(node.args[0])], name, axis=module.start_dim)
    raise ExportError(f"{node.target}: {type(module).__name__} is not exportable; the exporter knows convolutions, "
                      "linears, additions, ReLU/ReLU6, average/max pooling, flatten, slicing and zero padding")


def _function(w, node, name, read, q_out) -> str | None:
    table = _FUNCTION_NAMES if node.op == "call_function" else _METHOD_NAMES
    target = node.target if node.op == "call_method" else getattr(node.target, "__name__", str(node.target))
    kind = table.get(target)
    if kind is None:
        raise ExportError(f"{name}: {node.op} {target!r} is not exportable; the exporter knows convolutions, "
                          "linears, additions, ReLU/ReLU6, average/max pooling, flatten, slicing and zero padding")
    if kind == "size":
        return None  # only read by a flatten-like reshape, which checks it
    x = read(node.args[0])
    if kind in ("relu", "relu6"):
        return _activation(w, kind, x, name, q_out)
    if kind == "identity":
        return x
    if kind == "flatten":
        return w.node("Flatten", [x], name, axis=_flatten_axis(node))
    if kind == "getitem":
        return _slice(w, x, node.args[1], name)
    if kind == "pad":
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        if mode != "constant" or value:
            raise ExportError(f"{name}: only zero padding is exportable, got mode {mode!r} value {value!r}")
        return _pad(w, x, node.args[1], name)
    if kind in ("add", "gap") and node.kwargs:
        raise ExportError(f"{name}: {target} with {dict(node.kwargs)} is not exportable")
    if kind == "add":
        other = node.args[1]
        if not isinstance(other, fx.Node):
            raise ExportError(f"{name}: adding a constant is not exportable")
        return w.node("Add", [x, read(other)], name)
    if kind == "gap":
        if node.args[1] not in (1, (1, 1), [1, 1]):
            raise ExportError(f"{name}: adaptive pooling to {node.args[1]} is not exportable (only to 1x1)")
        return w.node("GlobalAveragePool", [x], name)
    raise ExportError(f"{name}: {target!r} is not exportable")


def export_onnx(student: nn.Module, spec: InputSpec, path: str | os.PathLike, *, metadata: dict | None = None,
                overwrite: bool = False, pack_int4: bool = False) -> Path:
    """Write `student` (a calibrated `deploy` student, on any device) as a QDQ ONNX file at `path`, atomically.

    Raises:
        FileExistsError: `path` exists and `overwrite` is False.
        ExportError: see `build_onnx`.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    with restored(student), torch.no_grad():
        model = build_onnx(student.eval(), spec, metadata=metadata, pack_int4=pack_int4)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(model.SerializeToString()))
    return path

