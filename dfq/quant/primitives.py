"""Pure tensor math of fake quantization: integer ranges, quantization parameters from a float range,
quantize-dequantize with straight-through gradients, and LSQ step-size gradient scaling.

Conventions: `scale` and `zero_point` are float tensors, either scalars (per tensor) or 1-D of length C
(per channel along `axis`). Quantized integers live in [qmin, qmax]; the zero point is an integer value
stored as float so that it can travel with the scale.
"""

from __future__ import annotations

import math

import torch

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, what: str = "bits") -> int:
    """Return `bits` if it is an int in [2, 8]; raise ValueError naming `what` otherwise."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def int_range(bits: int, signed: bool) -> tuple[int, int]:
    """(qmin, qmax) of a `bits`-bit integer: [-2^(b-1), 2^(b-1)-1] if signed else [0, 2^b-1]."""
    check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def broadcast_to_axis(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a per-channel vector `t` so it broadcasts against `x` along `axis` (no-op per tensor)."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def reduce_range(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of `x` over everything (axis None, scalars) or per slice along `axis` (vectors)."""
    if axis is None:
        return x.min(), x.max()
    flat = x.transpose(0, axis).reshape(x.shape[axis], -1)
    return flat.min(dim=1).values, flat.max(dim=1).values


def qparams_from_range(
    min_val: torch.Tensor,
    max_val: torch.Tensor,
    *,
    bits: int,
    symmetric: bool,
    signed: bool | None = None,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Scale, zero point and integer range that cover [min_val, max_val].

    Symmetric: zero point 0 and scale = max(|min|, |max|) / qmax; `signed=None` picks unsigned when
    min_val >= 0 everywhere (e.g. after ReLU), which doubles the resolution. Asymmetric: unsigned
    [0, 2^b-1], the range is widened to contain 0 so that zero is exact, scale = (max - min) / (2^b - 1)
    and zero point = round(-min / scale). Scales are floored at `eps` so a zero range stays finite.

    Returns:
        (scale, zero_point, qmin, qmax), scale and zero_point shaped like min_val.
    """
    if symmetric:
        if signed is None:
            signed = bool((min_val < 0).any())
        qmin, qmax = int_range(bits, signed)
        amax = torch.maximum(min_val.abs(), max_val.abs())
        scale = (amax / qmax).clamp_min(eps)
        return scale, torch.zeros_like(scale), qmin, qmax
    qmin, qmax = int_range(bits, signed=False)
    lo = min_val.clamp(max=0)
    hi = max_val.clamp(min=0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(eps)
    zero_point = (qmin - lo / scale).round().clamp(qmin, qmax)
    return scale, zero_point, qmin, qmax


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `factor` in the backward pass."""
    return x * factor + (x - x * factor).detach()


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Integer codes (as float) of `x`: clamp(round(x / scale) + zero_point, qmin, qmax). No gradient."""
    s = broadcast_to_axis(scale, x, axis)
    z = broadcast_to_axis(zero_point, x, axis)
    return (torch.round(x / s) + z).clamp(qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """Float values of integer codes: (q - zero_point) * scale."""
    return (q - broadcast_to_axis(zero_point, q, axis)) * broadcast_to_axis(scale, q, axis)


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """Quantize-dequantize `x`, with straight-through gradients.

    The value is exactly dequantize(quantize(x)). d out / d x is 1 where round(x / s) + z lands in
    [qmin, qmax] and 0 where it is clipped (the same mask as torch's fake_quantize). If `scale` requires
    grad it receives LSQ's step gradient: round(x/s) - x/s inside the range, q - z where clipped.
    """
    s = broadcast_to_axis(scale, x, axis)
    z = broadcast_to_axis(zero_point, x, axis)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or s.requires_grad)
    with torch.no_grad():
        q = torch.div(x, s).round_().add_(z)  # round(x / s) + z, in place on one temporary
        inside = (q >= qmin) & (q <= qmax) if needs_grad else None
        q.clamp_(qmin, qmax).sub_(z)
    if not needs_grad:
        return q.mul_(s)
    # The second term is zero in value; its gradient is `inside` w.r.t. x and -x/s (inside) w.r.t. s.
    return q * s + inside * (x * (s.detach() / s) - x.detach())


def lsq_grad_factor(numel_per_scale: int, qmax: int) -> float:
    """LSQ's step-size gradient scale, 1 / sqrt(N * Qp) (Esser et al. 2020)."""
    return 1.0 / math.sqrt(max(numel_per_scale, 1) * max(qmax, 1))


def lsq_fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int | None = None
) -> torch.Tensor:
    """`fake_quantize` with a learnable step: the gradient reaching `scale` is LSQ's
    (-x/s + round(x/s) inside the range, qmin - z or qmax - z where clipped), times 1/sqrt(N * Qp)."""
    numel_per_scale = x.numel() // max(scale.numel(), 1)
    s = scale_grad(scale, lsq_grad_factor(numel_per_scale, qmax))
    return fake_quantize(x, s, zero_point, qmin, qmax, axis)
