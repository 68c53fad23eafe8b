"""Range observers. Each has three methods: `collect(x)` (see a tensor), `compute()` (the range so far,
as (min, max) tensors: scalars per tensor, vectors per channel) and `reset()`.

Observers hold calibration state only; the ranges they compute are copied into a quantizer's buffers,
so observers are plain objects, not modules, and never appear in a state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfq.quant.primitives import dequantize, qparams_from_range, quantize, reduce_range


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    bits: 2..8. symmetric: zero point 0 (else asymmetric unsigned). signed: for symmetric, None chooses
    from the observed range. axis: channel axis for per-channel ranges, None for per tensor.
    """

    bits: int
    symmetric: bool = False
    signed: bool | None = None
    axis: int | None = None


class Observer:
    """Base class: subclasses implement `collect`, `compute` and `reset`."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec

    def collect(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def _not_ready(self) -> RuntimeError:
        return RuntimeError(f"{type(self).__name__}.compute() called before any tensor was collected")


class MinMaxObserver(Observer):
    """The running minimum and maximum over everything collected."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__(spec)
        self.reset()

    def reset(self) -> None:
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def collect(self, x: torch.Tensor) -> None:
        lo, hi = reduce_range(x.detach(), self.spec.axis)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = torch.minimum(self.min_val, lo)
            self.max_val = torch.maximum(self.max_val, hi)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None:
            raise self._not_ready()
        return self.min_val, self.max_val


class MovingAverageMinMaxObserver(MinMaxObserver):
    """An exponential moving average of each batch's min and max: the first batch sets the average, then
    avg <- (1 - momentum) * avg + momentum * batch. The stored average is exactly what feeds the next
    update; no bias correction is applied to it."""

    def __init__(self, spec: QuantSpec, momentum: float = 0.1) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        super().__init__(spec)

    def collect(self, x: torch.Tensor) -> None:
        lo, hi = reduce_range(x.detach(), self.spec.axis)
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val = self.min_val + self.momentum * (lo - self.min_val)
            self.max_val = self.max_val + self.momentum * (hi - self.max_val)


class _SampleObserver(Observer):
    """Keeps a bounded, deterministic subsample of the collected values (per channel when axis is set)."""

    def __init__(self, spec: QuantSpec, max_samples: int = 1 << 20) -> None:
        super().__init__(spec)
        self.max_samples = max_samples
        self.reset()

    def reset(self) -> None:
        self._chunks: list[torch.Tensor] = []
        self._count = 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.axis is None:
            return x.reshape(1, -1)
        return x.transpose(0, self.spec.axis).reshape(x.shape[self.spec.axis], -1)

    def collect(self, x: torch.Tensor) -> None:
        rows = self._rows(x.detach().float())  # (C, N)
        budget = max(self.max_samples // 8, 1)  # at most 1/8 of the budget from any one batch
        stride = max(rows.shape[1] // budget, 1)
        rows = rows[:, ::stride]
        self._chunks.append(rows)
        self._count += rows.shape[1]
        while self._count > self.max_samples and len(self._chunks) > 1:
            # Thin the oldest samples by half so that every batch stays represented.
            self._chunks = [c[:, ::2] for c in self._chunks]
            self._count = sum(c.shape[1] for c in self._chunks)

    def samples(self) -> torch.Tensor:
        if not self._chunks:
            raise self._not_ready()
        return torch.cat(self._chunks, dim=1)  # (C, N)

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        return t[0] if self.spec.axis is None else t


class PercentileObserver(_SampleObserver):
    """The `percentile` and `100 - percentile` quantiles of the collected values (clips outliers)."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, max_samples: int = 1 << 20) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        super().__init__(spec, max_samples)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=s.dtype, device=s.device)
        lo, hi = torch.quantile(s, q, dim=1)
        return self._squeeze(lo), self._squeeze(hi)


class MSEObserver(_SampleObserver):
    """The clipping range that minimises the mean squared quantization error of the collected values:
    the min-max range shrunk by each ratio in a grid (per channel when axis is set) and the best kept."""

    def __init__(self, spec: QuantSpec, num_ratios: int = 80, min_ratio: float = 0.2, max_samples: int = 1 << 20) -> None:
        if not 0.0 < min_ratio < 1.0 or num_ratios < 2:
            raise ValueError("MSEObserver needs 0 < min_ratio < 1 and num_ratios >= 2")
        self.ratios = torch.linspace(min_ratio, 1.0, num_ratios)
        super().__init__(spec, max_samples)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples()  # (C, N)
        lo, hi = s.min(dim=1).values, s.max(dim=1).values
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for r in self.ratios.tolist():
            c_lo, c_hi = lo * r, hi * r
            scale, zp, qmin, qmax = qparams_from_range(
                c_lo, c_hi, bits=self.spec.bits, symmetric=self.spec.symmetric, signed=self.spec.signed
            )
            deq = dequantize(quantize(s, scale, zp, qmin, qmax, axis=0), scale, zp, axis=0)
            err = (deq - s).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo = torch.where(better, c_lo, best_lo)
            best_hi = torch.where(better, c_hi, best_hi)
        return self._squeeze(best_lo), self._squeeze(best_hi)


OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def create_observer(name: str, spec: QuantSpec, **kwargs) -> Observer:
    """An observer by name: one of `OBSERVERS`.

    Raises:
        ValueError: unknown name.
    """
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")
    return OBSERVERS[name](spec, **kwargs)
