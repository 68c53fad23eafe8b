import pytest
import torch

from dfq.quant.primitives import (
    check_bits,
    dequantize,
    fake_quantize,
    int_range,
    lsq_fake_quantize,
    lsq_grad_factor,
    qparams_from_range,
    quantize,
)

BITS = range(2, 9)


def test_int_ranges():
    assert int_range(8, signed=True) == (-128, 127)
    assert int_range(8, signed=False) == (0, 255)
    assert int_range(2, signed=True) == (-2, 1)
    assert int_range(3, signed=False) == (0, 7)


@pytest.mark.parametrize("bad", [1, 9, 0, 4.0, True, "4"])
def test_bits_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match="from 2 to 8"):
        check_bits(bad)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_values_on_the_grid_come_back_unchanged(bits, symmetric):
    scale, zp, qmin, qmax = qparams_from_range(torch.tensor(-1.3), torch.tensor(2.1), bits=bits, symmetric=symmetric)
    grid = dequantize(torch.arange(qmin, qmax + 1, dtype=torch.float), scale, zp)
    assert torch.equal(fake_quantize(grid, scale, zp, qmin, qmax), grid)
    assert torch.equal(quantize(grid, scale, zp, qmin, qmax), torch.arange(qmin, qmax + 1, dtype=torch.float))


@pytest.mark.parametrize("bits", BITS)
def test_per_channel_grid_values_come_back_unchanged(bits):
    lo, hi = torch.tensor([-1.0, -0.1, 0.0]), torch.tensor([1.0, 3.0, 0.5])
    scale, zp, qmin, qmax = qparams_from_range(lo, hi, bits=bits, symmetric=False)
    codes = torch.randint(qmin, qmax + 1, (3, 4, 2, 2)).float()
    w = dequantize(codes, scale, zp, axis=0)
    assert torch.equal(fake_quantize(w, scale, zp, qmin, qmax, axis=0), w)


def test_asymmetric_keeps_zero_exact_and_symmetric_picks_unsigned_for_nonnegative_ranges():
    scale, zp, qmin, qmax = qparams_from_range(torch.tensor(0.3), torch.tensor(2.0), bits=4, symmetric=False)
    assert zp.item() == 0.0 and (qmin, qmax) == (0, 15)  # range widened to [0, 2]
    assert fake_quantize(torch.tensor(0.0), scale, zp, qmin, qmax).item() == 0.0
    scale, zp, qmin, qmax = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), bits=8, symmetric=False)
    assert fake_quantize(torch.tensor(0.0), scale, zp, qmin, qmax).item() == 0.0
    assert scale.item() == pytest.approx(4.0 / 255)
    scale, zp, qmin, qmax = qparams_from_range(torch.tensor(0.0), torch.tensor(3.0), bits=4, symmetric=True)
    assert (qmin, qmax) == (0, 15) and scale.item() == pytest.approx(3.0 / 15)
    scale, zp, qmin, qmax = qparams_from_range(torch.tensor(-0.5), torch.tensor(3.0), bits=4, symmetric=True)
    assert (qmin, qmax) == (-8, 7) and scale.item() == pytest.approx(3.0 / 7)


def test_fake_quantize_matches_torch_reference_exactly():
    x = torch.randn(10_000) * 3
    scale, zp, qmin, qmax = qparams_from_range(x.min(), x.max(), bits=5, symmetric=False)
    ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp.item()), qmin, qmax)
    assert torch.equal(fake_quantize(x, scale, zp, qmin, qmax), ref)

    w = torch.randn(6, 3, 3, 3)
    lo, hi = w.amin(dim=(1, 2, 3)), w.amax(dim=(1, 2, 3))
    scale, zp, qmin, qmax = qparams_from_range(lo, hi, bits=4, symmetric=True)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp.int(), 0, qmin, qmax)
    assert torch.equal(fake_quantize(w, scale, zp, qmin, qmax, axis=0), ref)


def test_ste_gradient_is_one_inside_and_zero_outside():
    scale, zp, qmin, qmax = torch.tensor(0.1), torch.tensor(0.0), -8, 7  # range [-0.8, 0.7]
    x = torch.tensor([-2.0, -0.79, -0.33, 0.0, 0.26, 0.69, 0.9, 5.0], requires_grad=True)
    fake_quantize(x, scale, zp, qmin, qmax).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_lsq_grad_factor():
    assert lsq_grad_factor(100, 15) == pytest.approx(1 / (1500 ** 0.5))


@pytest.mark.parametrize("axis", [None, 0])
def test_lsq_step_gradient_matches_finite_differences(axis):
    """LSQ's step gradient is the derivative of the quantizer with the rounding residual held fixed
    (round treated as identity inside the range, clipped values constant), times 1/sqrt(N * Qp)."""
    torch.manual_seed(1)
    x = torch.randn(4, 8, dtype=torch.float64) * 2
    weights = torch.randn(4, 8, dtype=torch.float64)
    qmin, qmax = -8, 7
    shape = (4,) if axis == 0 else ()
    s0 = torch.full(shape, 0.21, dtype=torch.float64)
    zp = torch.zeros(shape, dtype=torch.float64)

    step = s0.clone().requires_grad_(True)
    (lsq_fake_quantize(x, step, zp, qmin, qmax, axis) * weights).sum().backward()

    b = (lambda t: t.reshape(-1, 1)) if axis == 0 else (lambda t: t)
    v0 = (x / b(s0)).clamp(qmin, qmax)
    residual = v0.round() - v0  # frozen at s0

    def surrogate(s):
        return (((x / b(s)).clamp(qmin, qmax) + residual) * b(s) * weights).sum()

    eps = 1e-6
    n = x.numel() // max(s0.numel(), 1)
    factor = lsq_grad_factor(n, qmax)
    for i in range(max(s0.numel(), 1)):
        bump = torch.zeros_like(s0)
        bump.view(-1)[i] = eps
        fd = (surrogate(s0 + bump) - surrogate(s0 - bump)) / (2 * eps)
        assert step.grad.view(-1)[i].item() == pytest.approx(fd.item() * factor, rel=1e-6, abs=1e-9)


def test_lsq_with_a_zero_point_quantizes_and_sends_lsq_step_gradients():
    s, z, qmin, qmax = 0.1, 3.0, 0, 15  # the grid covers [-0.3, 1.2]
    # two below the grid, four inside (1.16 rounds to exactly qmax), two above
    values = [-1.0, -0.5, -0.23, 0.04, 0.57, 1.16, 1.3, 2.0]
    weights = [1.0, -2.0, 3.0, 0.5, -1.5, 2.5, 4.0, -3.0]  # distinct, so no region's terms can cancel another's
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    out = lsq_fake_quantize(x, scale, torch.tensor(z, dtype=torch.float64), qmin, qmax)
    (out * torch.tensor(weights, dtype=torch.float64)).sum().backward()

    codes = [round(v / s) + z for v in values]
    expected_out = [(min(max(c, qmin), qmax) - z) * s for c in codes]
    assert out.tolist() == pytest.approx(expected_out, rel=1e-12, abs=1e-12)
    step_grads = [qmin - z if c < qmin else qmax - z if c > qmax else round(v / s) - v / s
                  for v, c in zip(values, codes)]
    expected_grad = sum(w * g for w, g in zip(weights, step_grads)) / (len(values) * qmax) ** 0.5
    assert scale.grad.item() == pytest.approx(expected_grad, rel=1e-9)
    assert x.grad.tolist() == [0.0, 0.0, 3.0, 0.5, -1.5, 2.5, 0.0, 0.0]  # straight through inside only
