import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfq.models import create_teacher
from dfq.quant.fold import fold_batchnorm, fold_conv_bn
from tests.quant.helpers import randomize_bn, tiny_net


def _rel_err(a, b):
    return ((a - b).norm() / a.norm()).item()


@pytest.mark.parametrize(
    "name, size, expected_pairs",
    [
        ("cifar10_resnet20", 32, 19),
        ("tv:resnet18", 64, 20),
        ("tv:mobilenet_v2", 64, 52),
        ("timm:resnet18", 64, 20),
        ("timm:mobilenetv3_small_100", 64, 34),  # timm's BatchNormAct2d keeps its activation
    ],
)
def test_folded_model_reproduces_logits(name, size, expected_pairs):
    model, _ = create_teacher(name, pretrained=False)
    randomize_bn(model)
    folded = copy.deepcopy(model)
    pairs = fold_batchnorm(folded)
    assert len(pairs) == expected_pairs
    assert not any(isinstance(m, _BatchNorm) for m in folded.modules())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _rel_err(model(x), folded(x)) < 1e-4


def test_fold_conv_bn_math():
    conv, bn = nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3)
    randomize_bn(nn.Sequential(conv, bn))
    folded = fold_conv_bn(conv, bn)
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded.weight, conv.weight * factor.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(folded.bias, (conv.bias - bn.running_mean) * factor + bn.bias)


def test_conv_with_two_consumers_is_not_folded():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize_bn(Branchy())
    assert fold_batchnorm(model) == []
    assert isinstance(model.bn, nn.BatchNorm2d)


def test_bn_without_running_stats_cannot_be_folded():
    with pytest.raises(ValueError, match="running statistics"):
        fold_conv_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))


def test_tiny_net_folds_both_pairs():
    model = randomize_bn(tiny_net())
    folded = copy.deepcopy(model)
    assert fold_batchnorm(folded) == [("0", "1"), ("3", "4")]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert _rel_err(model(x), folded(x)) < 1e-5
