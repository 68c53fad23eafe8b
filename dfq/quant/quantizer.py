"""`TensorQuantizer`: the stateful module that fake-quantizes one tensor (a layer's weight or input)."""

from __future__ import annotations

import torch
from torch import nn

from dfq import distributed
from dfq.quant.observers import Observer, QuantSpec, create_observer
from dfq.quant.primitives import fake_quantize, int_range, lsq_fake_quantize, qparams_from_range, reduce_range


class TensorQuantizer(nn.Module):
    """Fake-quantizes a tensor with a stored scale and zero point.

    Modes:
      - enabled (default): quantize-dequantize with a straight-through gradient.
      - disabled (`enabled = False`): pass the tensor through unchanged.
      - calibrating (`calibrating = True`): pass through and show the tensor to the observer;
        `load_observed_range()` then sets scale and zero point from what was observed.
      - dynamic (`dynamic = True`): take the range from each tensor as it comes (min-max), as the
        GDFQ-family recipes do for weights during fine-tuning.
      - tracking (`track_momentum = m`): in training mode, move the range towards each batch's min-max
        by an exponential moving average with momentum m, then quantize (GDFQ's activation ranges
        early in fine-tuning); the average is the stored range itself, not a bias-corrected copy. Under
        several processes (`dfq.distributed`) each batch's min-max is that of every process's batch.
    With `learnable=True` the scale is trained with LSQ's gradient (after calibration initialises it).

    Args:
        spec: bits, symmetry, signedness and channel axis.
        num_channels: length of the channel axis for per-channel specs (sizes the buffers).
        observer: name of the range observer used in calibration ("minmax", "moving_average",
            "percentile", "mse"); observer_kwargs are passed to it.
        learnable: train the scale with LSQ.
        device: where scale, zero point and range buffers live (default: the default device); quantized
            layers pass their weight's device.
    """

    def __init__(
        self,
        spec: QuantSpec,
        *,
        num_channels: int | None = None,
        observer: str = "minmax",
        observer_kwargs: dict | None = None,
        learnable: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if spec.axis is not None and not num_channels:
            raise ValueError("a per-channel quantizer needs num_channels")
        self.spec = spec
        self.observer_name = observer
        self.observer: Observer = create_observer(observer, spec, **(observer_kwargs or {}))
        shape = (num_channels,) if spec.axis is not None else ()
        self.scale = nn.Parameter(torch.ones(shape, device=device), requires_grad=learnable)
        self.register_buffer("zero_point", torch.zeros(shape, device=device))
        # qmin/qmax depend on the observed sign for symmetric specs, so they are state too.
        qrange = int_range(spec.bits, signed=spec.symmetric and spec.signed is not False)
        self.register_buffer("qrange", torch.tensor(qrange, dtype=torch.long, device=device))
        self.register_buffer("initialized", torch.tensor(False, device=device))
        # the moving-average range of tracking mode (NaN until the first tracked batch)
        self.register_buffer("running_min", torch.full(shape, float("nan"), device=device))
        self.register_buffer("running_max", torch.full(shape, float("nan"), device=device))
        self.enabled = True
        self.calibrating = False
        # a wider quantizer of the same tensor applied first (dfq.quant.graph.tie_shared_inputs): an integer
        # runtime holds the tensor at the wider width and requantizes it; kept out of the module tree (it is
        # registered where it belongs), so it is neither saved twice nor visited twice
        self._source: list[TensorQuantizer] = []
        self.dynamic = False
        self.track_momentum: float | None = None
        # Python copies of qrange/initialized: reading tensors in forward would sync an accelerator.
        self._qmin, self._qmax = qrange
        self._ready = False
        self.register_load_state_dict_post_hook(lambda module, _keys: module._sync_cached_state())

    def _sync_cached_state(self) -> None:
        self._qmin, self._qmax = (int(v) for v in self.qrange)
        self._ready = bool(self.initialized)

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def learnable(self) -> bool:
        return self.scale.requires_grad

    def set_learnable(self, learnable: bool) -> None:
        self.scale.requires_grad_(learnable)

    def set_range(self, min_val: torch.Tensor, max_val: torch.Tensor) -> None:
        """Set scale, zero point and integer range so that [min_val, max_val] is covered."""
        scale, zp, qmin, qmax = qparams_from_range(
            min_val.detach(), max_val.detach(), bits=self.spec.bits, symmetric=self.spec.symmetric, signed=self.spec.signed
        )
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape))
            self.zero_point.copy_(zp.reshape(self.zero_point.shape))
            self.qrange.copy_(torch.tensor([qmin, qmax], device=self.qrange.device))
            self.initialized.fill_(True)
        self._qmin, self._qmax, self._ready = qmin, qmax, True

    def observe(self, x: torch.Tensor) -> None:
        """Show `x` to the observer (no quantization)."""
        self.observer.collect(x)

    def load_observed_range(self) -> None:
        """Set the range from the observer, then reset the observer.

        Raises:
            ValueError: the observed range is not finite (the data held NaN or inf).
        """
        lo, hi = self.observer.compute()
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("the observed range is not finite: the tensors seen held NaN or inf")
        self.set_range(lo, hi)
        self.observer.reset()

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float range [min, max] the current parameters represent."""
        s, z = self.scale.detach(), self.zero_point
        return (self._qmin - z) * s, (self._qmax - z) * s

    @property
    def source(self) -> "TensorQuantizer | None":
        return self._source[0] if self._source else None

    def set_source(self, source: "TensorQuantizer | None") -> None:
        """Quantize with `source` first (None: the tensor as it comes)."""
        self._source = [source] if source is not None else []

    def quantize_as_source(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize `x` with the stored range, for a narrower quantizer that requantizes this one's
        output: no observing and no range tracking (this quantizer's own calls do that, once per batch)."""
        if not self.enabled or self.calibrating:
            return x
        if not self._ready:
            raise RuntimeError("TensorQuantizer used before its range was set: run dfq.calibrate(model, batches)")
        return self._fake_quantize(x)

    def _fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize with the stored range (LSQ's step gradient when the scale trains)."""
        fq = lsq_fake_quantize if self.scale.requires_grad and self.training else fake_quantize
        return fq(x, self.scale, self.zero_point, self._qmin, self._qmax, self.spec.axis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self._source and not self.calibrating:
            x = self._source[0].quantize_as_source(x)
        if self.calibrating:
            self.observer.collect(x)
            return x
        if self.dynamic:
            self.set_range(*reduce_range(x.detach(), self.spec.axis))
        elif self.track_momentum is not None and self.training:
            self._track(x.detach())
        elif not self._ready:
            raise RuntimeError(
                "TensorQuantizer used before its range was set: run dfq.calibrate(model, batches) "
                "(or load a calibrated checkpoint) before evaluating a quantized model"
            )
        return self._fake_quantize(x)

    @torch.no_grad()
    def _track(self, x: torch.Tensor) -> None:
        lo, hi = reduce_range(x, self.spec.axis)
        lo, hi = distributed.all_reduce(lo, "min"), distributed.all_reduce(hi, "max")  # the global batch's
        if torch.isnan(self.running_min).any():
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
        else:
            m = self.track_momentum
            self.running_min.add_(m * (lo - self.running_min))
            self.running_max.add_(m * (hi - self.running_max))
        self.set_range(self.running_min, self.running_max)

    def extra_repr(self) -> str:
        s = self.spec
        gran = f"per-channel(axis={s.axis})" if s.axis is not None else "per-tensor"
        mode = "disabled" if not self.enabled else ("calibrating" if self.calibrating else "enabled")
        return (
            f"bits={s.bits}, {'symmetric' if s.symmetric else 'asymmetric'}, {gran}, observer={self.observer_name}, "
            f"learnable={self.learnable}, {mode}"
        )
