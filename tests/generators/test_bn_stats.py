import math

import pytest
import torch
from torch import nn

from generators.bn_stats import BatchStats, BNStatsRecorder, bn_kl_loss, bn_l2_loss, gaussian_kl, input_stats_kl
from tests.generators.helpers import tiny_teacher


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) for m in model.modules())


def test_recorder_records_batch_moments_and_removes_hooks():
    model = tiny_teacher()
    x = torch.randn(6, 3, 8, 8)
    with BNStatsRecorder(model) as rec:
        assert _hook_count(model) == 2
        model(x)
    assert _hook_count(model) == 0
    assert [s.name for s in rec.stats] == ["1", "4"]
    first_in = model[0](x)
    var, mean = torch.var_mean(first_in, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(rec.stats[0].mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rec.stats[0].var, var, rtol=1e-4, atol=1e-6)
    assert rec.stats[0].running_mean is model[1].running_mean


def test_recorder_removes_hooks_after_an_exception():
    model = tiny_teacher()
    with pytest.raises(RuntimeError, match="boom"):
        with BNStatsRecorder(model):
            raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_model_without_bn_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm layers"):
        BNStatsRecorder(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_reducer_gives_the_global_batch_statistics():
    """Two simulated ranks: each adds the other's sums, so both see the statistics of the whole batch."""
    model = tiny_teacher()
    a, b = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8) + 1.0
    with BNStatsRecorder(model) as other:
        model(b)
    with torch.no_grad():
        feats_b = model[0](b).flatten(2)
    other_sums = [feats_b.sum(dim=(0, 2)), (feats_b * feats_b).sum(dim=(0, 2)), torch.tensor(float(4 * 64))]
    layer = iter([other_sums])

    def add_other_rank(tensors):
        sums = next(layer, None)
        return [t + s for t, s in zip(tensors, sums)] if sums is not None else tensors

    with BNStatsRecorder(model, reduce_sums=add_other_rank) as rec:
        model(a)
    full = model[0](torch.cat([a, b]))
    var, mean = torch.var_mean(full, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(rec.stats[0].mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rec.stats[0].var, var, rtol=1e-4, atol=1e-5)
    assert other.stats  # the other rank's own statistics were recorded independently


def _stats(mean, var, rmean, rvar):
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return BatchStats("bn", t(mean), t(var), t(rmean), t(rvar))


def test_losses_are_zero_when_statistics_agree():
    s = _stats([0.5, -1.0], [2.0, 0.3], [0.5, -1.0], [2.0, 0.3])
    assert bn_kl_loss([s]).item() == pytest.approx(0.0, abs=1e-12)
    assert bn_l2_loss([s]).item() == 0.0


def test_kl_matches_a_hand_computed_value():
    # KL(N(1, 4) || N(0, 1)) = log(1/2) + (4 + 1) / 2 - 1/2 = 2 - log 2
    s = _stats([1.0], [4.0], [0.0], [1.0])
    assert gaussian_kl(s.mean, s.var, s.running_mean, s.running_var, eps=0.0).item() == pytest.approx(2 - math.log(2))
    assert bn_kl_loss([s]).item() == pytest.approx(2 - math.log(2), rel=1e-4)
    # two layers are averaged; weights scale each layer
    s2 = _stats([0.0], [1.0], [0.0], [1.0])
    assert bn_kl_loss([s, s2]).item() == pytest.approx((2 - math.log(2)) / 2, rel=1e-4)
    assert bn_kl_loss([s, s2], layer_weights=[2.0, 1.0]).item() == pytest.approx(2 - math.log(2), rel=1e-4)


def test_input_stats_kl_reads_the_normalization_as_mean_0_variance_1():
    # channel 0 has mean 0 and variance 1 exactly, channel 1 mean 1 and variance 4: KL(N(1, 4) || N(0, 1)) = 2 - log 2
    base = torch.tensor([-1.0, 1.0, -1.0, 1.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    images = torch.cat([base, 1 + 2 * base], dim=1).double()
    assert input_stats_kl(images).item() == pytest.approx((0 + 2 - math.log(2)) / 2, rel=1e-4)
    assert input_stats_kl(base.double()).item() == pytest.approx(0.0, abs=1e-4)
    # two processes, each half of the batch: with the sums added, the loss of the whole batch
    halves = images[:2], images[2:]
    other = iter([[halves[1].transpose(0, 1).flatten(1).sum(1), halves[1].transpose(0, 1).flatten(1).pow(2).sum(1),
                   torch.tensor(8.0, dtype=torch.float64)]])
    added = input_stats_kl(halves[0], reduce_sums=lambda ts: [t + o for t, o in zip(ts, next(other))])
    assert added.item() == pytest.approx(input_stats_kl(images).item(), rel=1e-6)


def test_l2_matches_a_hand_computed_value():
    s = _stats([1.0, 0.0], [4.0, 1.0], [0.0, 0.0], [1.0, 3.0])
    # mean part: (1 + 0) / 2 = 0.5; variance part: (9 + 4) / 2 = 6.5
    assert bn_l2_loss([s]).item() == pytest.approx(7.0)
    with pytest.raises(ValueError, match="layer weights"):
        bn_l2_loss([s], layer_weights=[1.0, 2.0])


def _bn(mean, var):
    bn = torch.nn.BatchNorm2d(len(mean)).eval()
    bn.running_mean.copy_(torch.tensor(mean))
    bn.running_var.copy_(torch.tensor(var))
    return bn


def _class_bn(x, labels, bn):
    from generators.bn_stats import class_bn_kl_loss

    with BNStatsRecorder(bn) as rec:
        bn(x)
    return class_bn_kl_loss(rec.stats, labels)


def test_class_bn_loss_is_zero_for_classes_with_the_running_statistics_and_large_for_a_collapsed_class():
    from generators.bn_stats import gaussian_kl

    bn = _bn([0.5, -1.0], [4.0, 0.25])
    g = torch.Generator().manual_seed(0)
    # each class alone has the running moments: standardize every class's values per channel
    x = torch.randn(8, 2, 6, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for c in (0, 1):
        part = x[labels == c]
        part = (part - part.mean((0, 2, 3), keepdim=True)) / part.std((0, 2, 3), unbiased=False, keepdim=True)
        x[labels == c] = part * bn.running_var.sqrt()[None, :, None, None] + bn.running_mean[None, :, None, None]
    assert _class_bn(x, labels, bn).item() == pytest.approx(0.0, abs=1e-4)
    # the whole batch matches too, but one class repeated as one image no longer does
    collapsed = x.clone()
    collapsed[labels == 1] = x[labels == 1][:1]
    per_class_var = collapsed[labels == 1].var((0, 2, 3), unbiased=False)
    per_class_mean = collapsed[labels == 1].mean((0, 2, 3))
    expected = 0.5 * gaussian_kl(per_class_mean, per_class_var, bn.running_mean, bn.running_var).mean()
    assert _class_bn(collapsed, labels, bn).item() == pytest.approx(expected.item(), rel=1e-4)
    # a class with a single image is left out, and a batch of singletons refused
    odd = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2])
    three = x[4:7]
    kl1 = gaussian_kl(three.mean((0, 2, 3)), three.var((0, 2, 3), unbiased=False), bn.running_mean, bn.running_var)
    assert _class_bn(x, odd, bn).item() == pytest.approx(0.5 * kl1.mean().item(), rel=1e-4)
    with pytest.raises(ValueError, match="no class has 2 images"):
        _class_bn(x[:3], torch.tensor([0, 1, 2]), bn)


def test_recorder_keeps_per_image_sums_with_gradients():
    teacher = tiny_teacher()
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    with BNStatsRecorder(teacher) as rec:
        teacher(x)
    first = rec.stats[0]
    inputs = teacher[0](x)
    assert first.positions == 64 and first.image_sums.shape == (4, 8)
    assert torch.allclose(first.image_sums, inputs.sum((2, 3)), atol=1e-5)
    assert torch.allclose(first.image_sq_sums, (inputs * inputs).sum((2, 3)), atol=1e-4)
    first.image_sums.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_recorder_keeps_float32_statistics_under_bfloat16_autocast():
    """Sums of squares of activations far from zero lose everything in bfloat16 (8 bits of mantissa): the
    recorder must upcast before it sums, not after."""
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.bias.fill_(20.0)  # every channel's mean near 20, its variance near 0.3: E[x^2] - mean^2 in bf16 is 0
    model = nn.Sequential(conv, nn.BatchNorm2d(4)).eval()
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bn_input = conv(x)  # what the BN layer sees under autocast
    assert bn_input.dtype == torch.bfloat16
    var, mean = torch.var_mean(bn_input.double(), dim=(0, 2, 3), correction=0)
    with BNStatsRecorder(model) as rec, torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    (s,) = rec.stats
    assert s.mean.dtype == torch.float32 and s.var.dtype == torch.float32
    torch.testing.assert_close(s.mean.double(), mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.var.double(), var, rtol=1e-3, atol=1e-4)
    assert var.min() > 0.05  # the variances are far from zero, which summing in bfloat16 would give
