"""What onnxruntime makes of an exported model: which layers run as integer kernels, and its outputs."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dfq.models.spec import InputSpec

INTEGER_KERNELS = {"QLinearConv": "conv", "ConvInteger": "conv", "QLinearMatMul": "linear", "QGemm": "linear",
                   "MatMulInteger": "linear", "MatMulIntegerToFloat": "linear", "DynamicQuantizeMatMul": "linear"}
FLOAT_KERNELS = {"Conv": "conv", "FusedConv": "conv", "Gemm": "linear", "MatMul": "linear", "FusedGemm": "linear",
                 "FusedMatMul": "linear"}
INTEGER_OPS = ("QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError("running ONNX models needs onnxruntime: pip install -e '.[export]' (from the repository root)") from None
    return onnxruntime


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX files needs the onnx package: pip install -e '.[export]' (from the "
                          "repository root)") from None
    return onnx


def session(path: str | os.PathLike, *, threads: int | None = None, optimized_path: str | os.PathLike | None = None,
            level: str = "all"):
    """An onnxruntime CPU session of `path` (graph optimizations at `level`: "basic", "extended" or "all"),
    writing its optimized graph to `optimized_path` when given."""
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's errors are not OSError/ValueError subclasses
        raise ValueError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from None


@dataclass
class KernelReport:
    """Layers of an exported model as onnxruntime runs them (after its graph optimizations)."""

    integer: Counter = field(default_factory=Counter)  # kernel type -> count (QLinearConv, QGemm, ...)
    integer_ops: Counter = field(default_factory=Counter)  # QLinearAdd, QLinearGlobalAveragePool, ...
    float_layers: list[str] = field(default_factory=list)  # "Conv layer1_0_conv1_Conv", convs/linears in float

    @property
    def integer_layers(self) -> int:
        return sum(self.integer.values())

    def all_integer(self) -> bool:
        return not self.float_layers and self.integer_layers > 0

    def format(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.integer.items()))
        ops = ", ".join(f"{n} {k}" for k, n in sorted(self.integer_ops.items()))
        text = f"integer kernels: {self.integer_layers} ({kinds or 'none'}); other integer ops: {ops or 'none'}"
        if self.float_layers:
            text += f"; in float: {len(self.float_layers)} ({', '.join(self.float_layers[:6])}" + (
                ", ...)" if len(self.float_layers) > 6 else ")")
        return text

    def to_dict(self) -> dict:
        return {"integer": dict(self.integer), "integer_ops": dict(self.integer_ops),
                "float_layers": self.float_layers, "all_integer": self.all_integer()}


def integer_kernels(path: str | os.PathLike) -> KernelReport:
    """Count the convolutions and linears onnxruntime runs as integer kernels in its optimized graph (the
    fusions of QDQ groups happen at its "extended" level; "all" adds only layout changes), and name those
    it leaves in float."""
    onnx = _onnx()
    report = KernelReport()
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session(path, optimized_path=optimized, level="extended")
        graph = onnx.load(str(optimized)).graph
    for node in graph.node:
        if node.op_type in INTEGER_KERNELS:
            report.integer[node.op_type] += 1
        elif node.op_type in INTEGER_OPS:
            report.integer_ops[node.op_type] += 1
        elif node.op_type in FLOAT_KERNELS:
            report.float_layers.append(f"{node.op_type} {node.name}")
    return report


def onnx_logits(path_or_session, batches: Iterable, *, threads: int | None = None) -> torch.Tensor:
    """Logits of an ONNX model on batches of normalized images (tensors or (images, labels) pairs)."""
    sess = session(path_or_session, threads=threads) if isinstance(path_or_session, (str, os.PathLike)) \
        else path_or_session
    name = sess.get_inputs()[0].name
    outs = []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        outs.append(torch.from_numpy(sess.run(None, {name: images.detach().cpu().float().numpy()})[0]))
    return torch.cat(outs) if outs else torch.empty(0)


class OnnxModule(nn.Module):
    """An onnxruntime session as a module (CPU, no gradient), so that `dfq.evaluate` can run it."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        self.session = session(path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: images.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)


def input_spec(path: str | os.PathLike, metadata: dict | None = None) -> InputSpec:
    """The input spec an exported model records (`export_onnx` writes it); pass its `read_metadata` when it
    has been read already.

    Raises:
        ValueError: the file records none (not written by gznq).
    """
    spec = (read_metadata(path) if metadata is None else metadata).get("input_spec")
    if not isinstance(spec, dict):
        raise ValueError(f"{path} records no input spec; export it with `train.py export`")
    return InputSpec(**{**spec, "mean": tuple(spec["mean"]), "std": tuple(spec["std"])})


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata an exported model carries (JSON values decoded)."""
    import json

    try:
        model = _onnx().load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's decode errors are not ValueErrors
        raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    meta = {}
    for prop in model.metadata_props:
        try:
            meta[prop.key] = json.loads(prop.value)
        except ValueError:
            meta[prop.key] = prop.value
    return meta


