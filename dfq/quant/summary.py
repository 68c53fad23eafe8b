"""A per-layer summary of a quantized model: bits, granularity, ranges, and the weight storage it implies."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from dfq.quant.matching import match_layers
from dfq.quant.modules import QUANT_MODULES, QuantConv2d, QuantLinear


@dataclass
class LayerSummary:
    name: str
    kind: str
    w_bits: int | None  # None: weights kept in float
    a_bits: int | None  # None: input kept in float
    w_granularity: str
    w_symmetric: bool | None
    w_range: tuple[float, float] | None  # the widest channel range
    a_range: tuple[float, float] | None
    num_weights: int
    float_reason: str | None = None  # why a conv/linear was left in float


@dataclass
class ModelSummary:
    layers: list[LayerSummary]
    quantized_weight_bits: int  # conv/linear weights at their bits, everything else at 32
    float_weight_bits: int  # all parameters at 32 bits

    @property
    def compression_ratio(self) -> float:
        return self.float_weight_bits / max(self.quantized_weight_bits, 1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["compression_ratio"] = self.compression_ratio
        return out

    def format(self) -> str:
        """A plain-text table, one row per layer, and the totals."""
        head = f"{'layer':<28} {'type':<6} {'W':>2} {'A':>2} {'weights':<22} {'w range':<20} {'a range':<20}"
        lines = [head, "-" * len(head)]
        for s in self.layers:
            w = f"{s.w_granularity}{' sym' if s.w_symmetric else ' asym' if s.w_symmetric is not None else ''}"
            wr = f"[{s.w_range[0]:.3g}, {s.w_range[1]:.3g}]" if s.w_range else "float"
            ar = f"[{s.a_range[0]:.3g}, {s.a_range[1]:.3g}]" if s.a_range else "float"
            lines.append(
                f"{s.name:<28} {s.kind:<6} {s.w_bits or '-':>2} {s.a_bits or '-':>2} {w:<22} {wr:<20} {ar:<20}"
            )
        for s in self.layers:
            if s.float_reason:
                lines.append(f"left in float: {s.name}: {s.float_reason}")
        lines.append(
            f"weights: {self.quantized_weight_bits / 8 / 1024:.1f} KiB quantized vs "
            f"{self.float_weight_bits / 8 / 1024:.1f} KiB FP32, compression {self.compression_ratio:.2f}x"
        )
        return "\n".join(lines)


def _range(q) -> tuple[float, float] | None:
    if q is None or not q._ready:
        return None
    lo, hi = q.range()
    return float(lo.min()), float(hi.max())


def _float_layer(name: str, match) -> LayerSummary:
    m = match.module
    return LayerSummary(name=name, kind="conv" if isinstance(m, nn.Conv2d) else "linear", w_bits=None, a_bits=None,
                        w_granularity="float", w_symmetric=None, w_range=None, a_range=None,
                        num_weights=m.weight.numel(),
                        float_reason=match.reason or "not quantized: matched by QuantConfig.skip")


def summarize(model: nn.Module) -> ModelSummary:
    """Per conv/linear layer its bits, weight granularity and symmetry, and ranges, or why it was left in float;
    total weight storage with quantized conv/linear weights at their bit width and every other parameter
    (biases, BN, scales excluded) at 32 bits, against all of it at 32 bits."""
    layers = []
    quant_param_ids = set()
    qbits = 0
    left_float = {m.name: m for m in match_layers(model, QUANT_MODULES)}
    for name, m in model.named_modules():
        if name in left_float:
            layers.append(_float_layer(name, left_float[name]))
            continue
        if not isinstance(m, (QuantConv2d, QuantLinear)):
            continue
        wq, iq = m.weight_quantizer, m.input_quantizer
        layers.append(
            LayerSummary(
                name=name,
                kind="conv" if isinstance(m, QuantConv2d) else "linear",
                w_bits=wq.bits if wq is not None and wq.enabled else None,
                a_bits=iq.bits if iq is not None and iq.enabled else None,
                w_granularity="per-channel" if wq is not None and wq.spec.axis is not None else "per-tensor",
                w_symmetric=wq.spec.symmetric if wq is not None else None,
                w_range=_range(wq),
                a_range=_range(iq),
                num_weights=m.weight.numel(),
            )
        )
        if wq is not None and wq.enabled:
            quant_param_ids.add(id(m.weight))
            qbits += m.weight.numel() * wq.bits
    float_bits = 0
    for name, p in model.named_parameters():
        if "quantizer" in name:
            continue
        float_bits += 32 * p.numel()
        if id(p) not in quant_param_ids:
            qbits += 32 * p.numel()
    return ModelSummary(layers=layers, quantized_weight_bits=qbits, float_weight_bits=float_bits)
