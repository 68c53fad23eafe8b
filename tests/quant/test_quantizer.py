import pytest
import torch

from dfq.quant.observers import QuantSpec
from dfq.quant.primitives import fake_quantize, qparams_from_range
from dfq.quant.quantizer import TensorQuantizer


def test_module_matches_the_pure_function_exactly():
    w = torch.randn(5, 3, 3, 3)
    q = TensorQuantizer(QuantSpec(4, symmetric=True, axis=0), num_channels=5)
    q.observe(w)
    q.load_observed_range()
    lo, hi = w.amin(dim=(1, 2, 3)), w.amax(dim=(1, 2, 3))
    s, z, qmin, qmax = qparams_from_range(lo, hi, bits=4, symmetric=True)
    assert torch.equal(q(w), fake_quantize(w, s, z, qmin, qmax, axis=0))


def test_calibration_mode_passes_through_and_observes():
    q = TensorQuantizer(QuantSpec(8))
    x = torch.linspace(-2, 3, 11)
    with pytest.raises(RuntimeError, match="before its range was set"):
        q(x)
    q.calibrating = True
    assert torch.equal(q(x), x)
    q.calibrating = False
    q.load_observed_range()
    lo, hi = q.range()
    assert lo.item() == pytest.approx(-2.0, abs=1e-6) and hi.item() == pytest.approx(3.0, abs=1e-6)
    q.enabled = False
    assert torch.equal(q(x * 10), x * 10)


def test_state_dict_round_trip_restores_range_and_readiness():
    q = TensorQuantizer(QuantSpec(3, symmetric=True))
    q.set_range(torch.tensor(0.0), torch.tensor(6.0))  # non-negative: unsigned [0, 7]
    fresh = TensorQuantizer(QuantSpec(3, symmetric=True))
    fresh.load_state_dict(q.state_dict())
    x = torch.linspace(-1, 7, 33)
    assert torch.equal(fresh(x), q(x))
    assert fresh.qrange.tolist() == [0, 7]


def test_learnable_scale_gets_a_gradient_only_when_learnable():
    x = torch.randn(64)
    q = TensorQuantizer(QuantSpec(4), learnable=True)
    q.set_range(x.min(), x.max())
    q.train()
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().item() > 0
    frozen = TensorQuantizer(QuantSpec(4))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_dynamic_mode_follows_each_tensor():
    q = TensorQuantizer(QuantSpec(8, axis=0), num_channels=2)
    q.dynamic = True
    a = torch.tensor([[0.0, 1.0], [0.0, 4.0]])
    q(a)
    assert q.range()[1].tolist() == pytest.approx([1.0, 4.0])
    q(a * 2)
    assert q.range()[1].tolist() == pytest.approx([2.0, 8.0])


def test_per_channel_needs_channel_count():
    with pytest.raises(ValueError, match="num_channels"):
        TensorQuantizer(QuantSpec(8, axis=0))


def test_tracking_mode_is_a_plain_ema_of_batch_ranges_in_training_only():
    q = TensorQuantizer(QuantSpec(8))
    q.track_momentum = 0.5
    q.train()
    for hi in (4.0, 8.0, 0.0):
        q(torch.tensor([0.0, hi]))
    # 4 -> 6 -> 3: the running maximum, not the quantizer's widened range, feeds the next update
    assert q.running_max.item() == 3.0 and q.running_min.item() == 0.0
    assert q.range()[1].item() == pytest.approx(3.0)
    q.eval()
    q(torch.tensor([0.0, 100.0]))
    assert q.running_max.item() == 3.0
