"""`QuantConfig`: what to quantize and how, with the two measurement protocols of DESIGN.md as presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dfq.quant.observers import OBSERVERS
from dfq.quant.primitives import check_bits

PROTOCOLS = ("paper", "deploy")


@dataclass(frozen=True)
class LayerOverride:
    """Bits for the layers whose qualified name matches `pattern` (fnmatch glob, e.g. "layer1.*.conv1");
    None keeps what the rest of the config gives."""

    pattern: str
    w_bits: int | None = None
    a_bits: int | None = None

    def __post_init__(self) -> None:
        if self.w_bits is not None:
            check_bits(self.w_bits, f"w_bits of override {self.pattern!r}")
        if self.a_bits is not None:
            check_bits(self.a_bits, f"a_bits of override {self.pattern!r}")


@dataclass(frozen=True)
class QuantConfig:
    """How `quantize_model` quantizes a model. Fields left None take the protocol's value.

    protocol "paper" (the GDFQ lineage's tables): every Conv2d/Linear at the target bits, first and last
    included; weights per-channel asymmetric; activations per-tensor asymmetric at the input of every
    conv/linear except the network input; BatchNorm kept in float.
    protocol "deploy" (default, what a device runs): BN folded into the convs; every conv/linear input
    quantized, the network input at 8 bits; first and last layer at 8 bits; weights per-channel symmetric;
    the operands of residual additions and of average pooling quantized too (`quantize_ops`, at `ops_bits`,
    8 by default: the residual stream stays at 8 bits and a layer reading it at a_bits requantizes it), and a
    tensor read by several quantized consumers quantized once, as an integer runtime (onnxruntime's
    QLinearAdd, QLinearGlobalAveragePool) runs them, so that the student's accuracy is the exported model's.
    The protocol's values are filled in at construction, so build a new config to change protocol rather
    than `dataclasses.replace` one.
    """

    w_bits: int = 8
    a_bits: int = 8
    protocol: str = "deploy"
    weight_observer: str = "minmax"
    act_observer: str = "minmax"
    w_symmetric: bool | None = None
    a_symmetric: bool | None = None
    fold_bn: bool | None = None
    first_layer_bits: int | None = None  # weight bits of the first conv/linear (None: w_bits)
    last_layer_bits: int | None = None  # weight and input bits of the last conv/linear (None: w_bits, a_bits)
    input_bits: int | None = None  # bits of the network input (first layer's input); 0 = keep in float
    quantize_ops: bool | None = None  # quantize additions' and average pools' inputs, share inputs' quantizers
    ops_bits: int | None = None  # bits of those inputs (deploy: 8)
    overrides: tuple[LayerOverride, ...] = ()
    skip: tuple[str, ...] = ()  # fnmatch patterns of layers left in float
    learnable: bool = False  # LSQ step sizes
    percentile: float = 99.99  # for the percentile observer
    observer_seed: int = 0  # seeds the random samples the percentile and MSE observers keep

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        for name in (self.weight_observer, self.act_observer):
            if name not in OBSERVERS:
                raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")
        deploy = self.protocol == "deploy"
        defaults = {
            "w_symmetric": deploy,
            "a_symmetric": False,
            "fold_bn": deploy,
            "first_layer_bits": 8 if deploy else None,
            "last_layer_bits": 8 if deploy else None,
            "input_bits": 8 if deploy else 0,
            "quantize_ops": deploy,
            "ops_bits": 8 if deploy else None,
        }
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        for key in ("first_layer_bits", "last_layer_bits", "ops_bits"):
            if getattr(self, key) is not None:
                check_bits(getattr(self, key), key)
        if self.input_bits != 0:
            check_bits(self.input_bits, "input_bits (0 keeps the network input in float)")
        object.__setattr__(self, "overrides", tuple(
            o if isinstance(o, LayerOverride) else LayerOverride(**o) for o in self.overrides
        ))
        object.__setattr__(self, "skip", tuple(self.skip))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown QuantConfig fields {sorted(unknown)}")
        # students saved before quantize_ops existed were made with additions and pooling in float
        return cls(**{"quantize_ops": False, **data})
