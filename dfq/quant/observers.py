"""Range observers. Each has three methods: `collect(x)` (see a tensor), `compute()` (the range so far,
as (min, max) tensors: scalars per tensor, vectors per channel) and `reset()`.

Observers hold calibration state only; the ranges they compute are copied into a quantizer's buffers,
so observers are plain objects, not modules, and never appear in a state dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dfq import distributed
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

    def sync(self) -> None:
        """Merge what every process collected (`dfq.distributed`), so that all compute the same range; nothing
        in a single process."""

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

    def sync(self) -> None:
        """The minimum and maximum over every process's values (all-reduce MIN and MAX): exactly one process's
        range over all the images."""
        if not distributed.is_distributed():
            return
        if not distributed.all_true(self.min_val is not None):  # every process raises, none waits
            raise self._not_ready()
        self.min_val, self.max_val = distributed.all_reduce(self.min_val, "min"), distributed.all_reduce(self.max_val, "max")


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

    def sync(self) -> None:
        """The mean of the processes' averages (an average over batches seen in another order: close to, not
        equal to, one process's)."""
        if not distributed.is_distributed():
            return
        if not distributed.all_true(self.min_val is not None):
            raise self._not_ready()
        n = distributed.world_size()
        self.min_val = distributed.all_reduce(self.min_val, "sum") / n
        self.max_val = distributed.all_reduce(self.max_val, "sum") / n


# numpy's hypergeometric draws take counts below 10^9; ImageNet-size activations pass that over a few batches
_EXACT_LIMIT = 10**9


def _draw_split(rng: np.random.Generator, counts: list[int], k: int, room: list[int] | None = None) -> list[int]:
    """How many of `k` values drawn without replacement from groups of `counts` values fall in each group: the
    (multivariate) hypergeometric split, or, where the counts pass numpy's limit, its multinomial approximation
    (exact to within k / total, at most 0.1% here) capped at each group's `room` (default: its count)."""
    room = list(counts) if room is None else list(room)
    total = sum(counts)
    if total < _EXACT_LIMIT:
        if len(counts) == 2:
            first = int(rng.hypergeometric(counts[0], counts[1], k))
            shares = [first, k - first]
        else:
            shares = [int(v) for v in rng.multivariate_hypergeometric(counts, k)]
    else:
        shares = [int(v) for v in rng.multinomial(k, np.asarray(counts, dtype=float) / total)]
    excess = 0
    for i, r in enumerate(room):  # a group never gives more than it holds; the rest goes to groups with room
        if shares[i] > r:
            excess += shares[i] - r
            shares[i] = r
    for i, r in enumerate(room):
        extra = min(excess, r - shares[i])
        shares[i] += extra
        excess -= extra
    return shares


def _on(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(idx).to(x.device)


class _SampleObserver(Observer):
    """Keeps a bounded uniform random sample of everything collected (per channel when axis is set).

    Every collected value has the same chance to be in the sample, whichever batch it came in and wherever
    it sits in its tensor: after each batch the sample is a fresh draw of `max_samples` values (or all of
    them, while fewer were seen) from the old sample and the new batch, in proportion to how many values
    each stands for (a hypergeometric split, so that the result is uniform over all values seen). Values
    are drawn from a new batch with replacement (cheap on tensors of millions of values, and still a
    uniform draw) and from the kept sample without. Seeded, so a calibration repeats exactly.

    A regular stride would be cheaper but is not random: on a (256, C, 32, 32) activation a stride of
    256 * C * 32 / budget lands on the same image column every time, and zero padding makes that column
    unlike the rest.
    """

    def __init__(self, spec: QuantSpec, max_samples: int = 1 << 20, seed: int = 0) -> None:
        super().__init__(spec)
        if max_samples < 1:
            raise ValueError(f"max_samples must be positive, got {max_samples}")
        self.max_samples = max_samples
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._sample: torch.Tensor | None = None  # (C, K)
        self._seen = 0  # values per row collected so far
        self._rng = np.random.default_rng(self.seed)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.axis is None:
            return x.reshape(1, -1)
        return x.transpose(0, self.spec.axis).reshape(x.shape[self.spec.axis], -1)

    def collect(self, x: torch.Tensor) -> None:
        rows = self._rows(x.detach().float())  # (C, n)
        n = rows.shape[1]
        if n == 0:
            return
        keep = min(self.max_samples, self._seen + n)
        from_new = keep if self._sample is None else _draw_split(self._rng, [n, self._seen], keep)[0]
        parts = []
        if keep - from_new:
            old = self._sample.shape[1]
            parts.append(self._sample[:, _on(rows, self._rng.permutation(old)[:keep - from_new])])
        if from_new == n:
            parts.append(rows)
        elif from_new:
            parts.append(rows[:, _on(rows, self._rng.integers(n, size=from_new))])
        self._sample = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0].clone()
        self._seen += n

    def samples(self) -> torch.Tensor:
        if self._sample is None:
            raise self._not_ready()
        return self._sample  # (C, K)

    def sync(self) -> None:
        """Every process's sample gathered and merged into one uniform sample of all values seen: all of them
        while they fit in max_samples, else from each process a share in proportion to the values it saw (the
        same seeded draw on every process, so all keep the same sample)."""
        if not distributed.is_distributed():
            return
        if not distributed.all_true(self._sample is not None):
            raise self._not_ready()
        seen = distributed.all_gather_cat(torch.tensor([self._seen], device=self._sample.device)).tolist()
        kept = distributed.all_gather_cat(torch.tensor([self._sample.shape[1]], device=self._sample.device)).tolist()
        merged = distributed.all_gather_cat(self._sample, dim=1)
        total = sum(seen)
        keep = min(self.max_samples, total)
        if keep < merged.shape[1]:
            rng = np.random.default_rng(self.seed + 1)
            shares = _draw_split(rng, seen, keep, room=kept)  # how many of `keep` each process stands for
            starts = np.cumsum([0] + kept[:-1])
            idx = np.concatenate([start + rng.permutation(k)[:share] for start, k, share in zip(starts, kept, shares)])
            merged = merged[:, _on(merged, idx)]
        self._sample, self._seen = merged, total

    def _squeeze(self, t: torch.Tensor) -> torch.Tensor:
        return t[0] if self.spec.axis is None else t


class PercentileObserver(_SampleObserver):
    """The `percentile` and `100 - percentile` quantiles of the collected values (clips outliers)."""

    def __init__(self, spec: QuantSpec, percentile: float = 99.99, max_samples: int = 1 << 20, seed: int = 0) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        super().__init__(spec, max_samples, seed)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100], dtype=s.dtype, device=s.device)
        lo, hi = torch.quantile(s, q, dim=1)
        return self._squeeze(lo), self._squeeze(hi)


class MSEObserver(_SampleObserver):
    """The clipping range that minimises the mean squared quantization error of the collected values:
    the min-max range shrunk by each ratio in a grid (per channel when axis is set) and the best kept."""

    def __init__(self, spec: QuantSpec, num_ratios: int = 80, min_ratio: float = 0.2, max_samples: int = 1 << 20,
                 seed: int = 0) -> None:
        if not 0.0 < min_ratio < 1.0 or num_ratios < 2:
            raise ValueError("MSEObserver needs 0 < min_ratio < 1 and num_ratios >= 2")
        self.ratios = torch.linspace(min_ratio, 1.0, num_ratios)
        super().__init__(spec, max_samples, seed)

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
