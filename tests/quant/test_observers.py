import pytest
import torch

from dfq.quant.observers import (
    OBSERVERS,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    QuantSpec,
    create_observer,
)
from dfq.quant.primitives import dequantize, qparams_from_range, quantize


@pytest.mark.parametrize("name", sorted(OBSERVERS))
@pytest.mark.parametrize("value", [2.5, -1.25])
def test_constant_input_gives_that_constant_as_range(name, value):
    obs = create_observer(name, QuantSpec(4))
    for _ in range(3):
        obs.collect(torch.full((8, 16), value))
    lo, hi = obs.compute()
    assert lo.item() == value and hi.item() == value


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_per_channel_ranges_are_per_channel(name):
    obs = create_observer(name, QuantSpec(8, axis=1))
    x = torch.zeros(4, 3, 5)
    x[:, 0] = torch.linspace(-1, 1, 20).reshape(4, 5)
    x[:, 1] = torch.linspace(0, 10, 20).reshape(4, 5)
    x[:, 2] = 7.0
    obs.collect(x)
    lo, hi = obs.compute()
    assert lo.shape == (3,) and hi.shape == (3,)
    assert lo[2].item() == 7.0 and hi[2].item() == 7.0
    if name in ("minmax", "moving_average"):
        assert lo.tolist() == [-1.0, 0.0, 7.0] and hi.tolist() == [1.0, 10.0, 7.0]
    assert hi[1] > 5 and lo[0] < -0.5


def test_minmax_accumulates_over_batches_and_resets():
    obs = MinMaxObserver(QuantSpec(8))
    obs.collect(torch.tensor([0.0, 1.0]))
    obs.collect(torch.tensor([-3.0, 0.5]))
    assert [t.item() for t in obs.compute()] == [-3.0, 1.0]
    obs.reset()
    with pytest.raises(RuntimeError, match="before any tensor"):
        obs.compute()


def test_moving_average_is_a_plain_ema_of_batch_ranges():
    obs = MovingAverageMinMaxObserver(QuantSpec(8), momentum=0.5)
    for hi in (4.0, 8.0, 0.0, 2.0):
        obs.collect(torch.tensor([-hi, hi]))
    # 4 -> 4 + 0.5 (8 - 4) = 6 -> 6 + 0.5 (0 - 6) = 3 -> 3 + 0.5 (2 - 3) = 2.5; no bias correction fed back
    lo, hi = obs.compute()
    assert (lo.item(), hi.item()) == (-2.5, 2.5)
    with pytest.raises(ValueError, match="momentum"):
        MovingAverageMinMaxObserver(QuantSpec(8), momentum=0.0)


def test_percentile_clips_outliers():
    obs = PercentileObserver(QuantSpec(8), percentile=99.0)
    obs.collect(torch.arange(0, 10001, dtype=torch.float))
    lo, hi = obs.compute()
    assert lo.item() == pytest.approx(100.0) and hi.item() == pytest.approx(9900.0)


def _mse(x, lo, hi, bits):
    s, z, qmin, qmax = qparams_from_range(lo, hi, bits=bits, symmetric=False)
    return (dequantize(quantize(x, s, z, qmin, qmax), s, z) - x).pow(2).mean().item()


def test_mse_observer_clips_heavy_tails_and_beats_minmax():
    x = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    x[0] = 40.0  # an outlier that would waste min-max's range
    mse, mm = MSEObserver(QuantSpec(4)), MinMaxObserver(QuantSpec(4))
    mse.collect(x)
    mm.collect(x)
    (lo, hi), (mlo, mhi) = mse.compute(), mm.compute()
    assert hi < 0.5 * mhi
    assert _mse(x, lo, hi, 4) < 0.5 * _mse(x, mlo, mhi, 4)


def test_sample_observers_stay_within_their_budget():
    obs = PercentileObserver(QuantSpec(8), max_samples=4096)
    for _ in range(50):
        obs.collect(torch.randn(64, 1000))
    assert obs.samples().shape[1] <= 4096


def test_unknown_observer_is_refused():
    with pytest.raises(ValueError, match="unknown observer 'histogram'"):
        create_observer("histogram", QuantSpec(8))
