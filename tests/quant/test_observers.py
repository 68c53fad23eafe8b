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


@pytest.mark.parametrize("cls", [MSEObserver, PercentileObserver])
def test_sample_observers_see_every_column_of_an_activation_map(cls):
    # Column 0 zero (as zero padding makes it), the rest uniform in [0, 1]: at batch 256 the range must be
    # that of the whole map, not of column 0 (a fixed stride over the flattened tensor saw only column 0).
    x = torch.rand(256, 16, 32, 32)
    x[..., 0] = 0
    obs = cls(QuantSpec(4))
    obs.collect(x)
    lo, hi = obs.compute()
    assert lo.item() == 0.0 and hi.item() > 0.9


def test_sample_is_uniform_over_batches_of_different_sizes():
    # 3 batches of 1,000 zeros, then one of 9,000 ones: 75% of all values are ones, and so should the sample be.
    obs = PercentileObserver(QuantSpec(8), max_samples=2000)
    for _ in range(3):
        obs.collect(torch.zeros(1000))
    obs.collect(torch.ones(9000))
    s = obs.samples()
    assert s.shape == (1, 2000)
    assert abs(s.mean().item() - 0.75) < 0.04  # sd of the share is about 0.01


def test_sample_keeps_everything_while_under_budget_and_repeats_with_its_seed():
    obs = PercentileObserver(QuantSpec(8), max_samples=100)
    obs.collect(torch.arange(60.0))
    assert sorted(obs.samples()[0].tolist()) == list(range(60))
    obs.collect(torch.arange(60.0, 120.0))
    first = obs.samples().clone()
    assert first.shape == (1, 100)
    values = first[0]
    assert 30 < (values < 60).sum() < 70 and ((values >= 0) & (values < 120)).all()  # about half from each
    obs.reset()
    obs.collect(torch.arange(60.0))
    obs.collect(torch.arange(60.0, 120.0))
    assert torch.equal(obs.samples(), first)


def _brute_force_mse_range(x, bits, symmetric, ratios):
    """The best shrink ratio of x's min-max range, by explicit per-value quantization (no shared code)."""
    lo, hi = min(x), max(x)
    qmax = 2 ** (bits - 1) - 1 if symmetric else 2**bits - 1
    best = None
    for r in ratios:
        c_lo, c_hi = lo * r, hi * r
        if symmetric:
            scale = max(abs(c_lo), abs(c_hi)) / qmax
            qmin, zp = -qmax - 1, 0.0
        else:
            c_lo, c_hi = min(c_lo, 0.0), max(c_hi, 0.0)
            scale = (c_hi - c_lo) / qmax
            qmin, zp = 0, min(max(round(-c_lo / scale), 0), qmax)
        err = 0.0
        for v in x:
            q = min(max(round(v / scale) + zp, qmin), qmax)
            err += ((q - zp) * scale - v) ** 2
        if best is None or err < best[0] - 1e-9:
            best = (err, lo * r, hi * r)
    return best[1], best[2]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mse_observer_matches_a_brute_force_search(symmetric, seed):
    torch.manual_seed(seed)
    x = torch.distributions.StudentT(3.0).sample((300,))  # heavy tails: the best ratio is well inside (0.2, 1)
    obs = MSEObserver(QuantSpec(3, symmetric=symmetric, signed=True if symmetric else None), num_ratios=25)
    obs.collect(x)
    lo, hi = obs.compute()
    ref_lo, ref_hi = _brute_force_mse_range(x.tolist(), 3, symmetric, obs.ratios.tolist())
    assert lo.item() == pytest.approx(ref_lo, rel=1e-5) and hi.item() == pytest.approx(ref_hi, rel=1e-5)


def test_sample_is_uniform_along_the_batch_too():
    # image i holds the value i: a sample that favoured the first images (a prefix, a stride) would be skewed
    x = torch.arange(256.0).view(256, 1, 1, 1).expand(256, 16, 32, 32)
    obs = PercentileObserver(QuantSpec(8), max_samples=1 << 16)
    obs.collect(x)
    s = obs.samples()[0]
    assert abs(s.mean().item() - 127.5) < 2.0 and s.max() > 250 and s.min() < 5


def test_the_observer_seed_picks_the_sample():
    x = torch.randn(64, 1000)
    a, b, c = (MSEObserver(QuantSpec(4), max_samples=1000, seed=s) for s in (0, 0, 1))
    for obs in (a, b, c):
        obs.collect(x)
    assert torch.equal(a.samples(), b.samples()) and not torch.equal(a.samples(), c.samples())
