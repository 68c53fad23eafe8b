"""Layers are quantized by what they compute: subclasses of Conv2d/Linear, timm's variants; others left float
with the reason."""

import warnings

import pytest
import torch
from torch import nn

from dfq.quant import QuantConfig, quantize_model, summarize
from dfq.quant.convert import dequantize_model
from dfq.quant.modules import QuantConv2d, QuantLinear, QuantSamePadConv2d
from dfq.quant.same_pad import SamePadConv2d, same_pad


class MyConv(nn.Conv2d):  # a subclass that keeps Conv2d's forward
    pass


class Scaled(nn.Conv2d):  # its own forward: not a plain convolution
    def forward(self, x):
        return 2 * super().forward(x)


def _net(conv_type):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), conv_type(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_a_subclass_with_the_parents_forward_is_quantized():
    q = quantize_model(_net(MyConv), QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    assert isinstance(q[3], QuantConv2d) and [s.w_bits for s in summarize(q).layers] == [4, 4, 4]


def test_a_subclass_with_its_own_forward_stays_float_with_warning_and_reason():
    with pytest.warns(UserWarning, match=r"1 conv/linear layer\(s\) stay in float: 3: Scaled .* own forward"):
        q = quantize_model(_net(Scaled), QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    assert type(q[3]) is Scaled
    layers = summarize(q).layers
    assert [s.name for s in layers] == ["0", "3", "7"] and layers[1].w_bits is None
    assert "own forward" in layers[1].float_reason and "left in float: 3" in summarize(q).format()
    # skipped on purpose: no warning, and the summary says why
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_model(_net(Scaled), QuantConfig(w_bits=4, a_bits=4, protocol="paper", skip=("0", "3")))
    layers = summarize(q).layers
    assert "QuantConfig.skip" in layers[0].float_reason and "own forward" in layers[1].float_reason


def test_deploy_does_not_fold_bn_into_an_unknown_forward():
    with pytest.warns(UserWarning):
        q = quantize_model(_net(Scaled), QuantConfig(w_bits=8, a_bits=8, protocol="deploy"))
    assert isinstance(q[4], nn.BatchNorm2d) and isinstance(q[1], nn.Identity)  # the plain conv's BN folded


def test_timm_linear_is_the_classifier_and_the_last_layer():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = quantize_model(model, QuantConfig(w_bits=4, a_bits=4, protocol="deploy"))
    assert isinstance(q.classifier, QuantLinear)
    layers = summarize(q).layers
    assert layers[-1].name == "classifier" and layers[-1].w_bits == 8  # deploy keeps the last layer at 8 bits
    assert all(s.w_bits for s in layers) and not any(s.float_reason for s in layers)
    assert layers[-2].name == "conv_head" and layers[-2].w_bits == 4


def _timm_variants():
    from timm.layers import Conv2dSame, ScaledStdConv2d, StdConv2d, StdConv2dSame

    torch.manual_seed(0)
    net = nn.Sequential(StdConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), StdConv2dSame(8, 8, 3, stride=2),
                        nn.BatchNorm2d(8), ScaledStdConv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                        Conv2dSame(8, 4, 3, stride=2), nn.BatchNorm2d(4)).eval()
    for bn in net[1::2]:
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
    return net


@pytest.mark.parametrize("protocol", ["paper", "deploy"])
def test_timm_variants_compute_the_same_after_conversion(protocol):
    pytest.importorskip("timm")
    net = _timm_variants()
    q = quantize_model(net, QuantConfig(w_bits=8, a_bits=8, protocol=protocol))
    assert [type(m) for m in q if isinstance(m, nn.Conv2d)] == [QuantConv2d, QuantSamePadConv2d, QuantConv2d,
                                                                 QuantSamePadConv2d]
    x = torch.randn(2, 3, 17, 19)  # odd sizes: "same" padding pads unevenly
    reference = net(x)
    back = dequantize_model(q)
    assert isinstance(back[2], SamePadConv2d)
    if protocol == "deploy":  # every BN folded into the converted convolution before it
        assert all(isinstance(back[i], nn.Identity) for i in (1, 3, 5, 7))
    else:
        assert all(isinstance(back[i], nn.BatchNorm2d) for i in (1, 3, 5, 7))
    assert torch.allclose(back(x), reference, atol=1e-4 * reference.abs().max().item())


def test_same_pad_matches_tensorflow_sizes():
    x = torch.ones(1, 1, 17, 19)
    y = same_pad(x, (3, 3), (2, 2), (1, 1))
    # output ceil(17/2)=9 rows needs (9-1)*2+3 = 19 rows: 2 of padding, 1 top 1 bottom; 19 cols: 21 = 1 + 1
    assert y.shape == (1, 1, 19, 21)
    y = same_pad(torch.ones(1, 1, 16, 16), (3, 3), (2, 2), (1, 1))
    # ceil(16/2)=8 needs 17: one pixel, at the bottom/right as TensorFlow puts it
    assert y.shape == (1, 1, 17, 17) and y[0, 0, 0].sum() == 16 and y[0, 0, -1].sum() == 0


def test_the_exporter_refuses_a_same_padded_convolution(tmp_path):
    pytest.importorskip("onnx")
    from dfq.export import ExportError, export_onnx
    from dfq.models import InputSpec
    from dfq.quant import calibrate

    net = nn.Sequential(SamePadConv2d(3, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2), ).eval()
    net.insert(1, nn.BatchNorm2d(4).eval())
    q = quantize_model(net, QuantConfig(w_bits=8, a_bits=8, protocol="deploy"))
    calibrate(q, [torch.rand(4, 3, 16, 16)])
    spec = InputSpec(image_size=16, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=2)
    with pytest.raises(ExportError, match="not a plain convolution"):
        export_onnx(q, spec, tmp_path / "m.onnx")


class StandardizedInConvForward(nn.Conv2d):  # computes otherwise through _conv_forward, not forward
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight - weight.mean((1, 2, 3), keepdim=True), bias)


def test_a_subclass_overriding_conv_forward_stays_float():
    with pytest.warns(UserWarning, match="own forward"):
        q = quantize_model(_net(StandardizedInConvForward), QuantConfig(w_bits=4, a_bits=4, protocol="deploy"))
    assert type(q[3]) is StandardizedInConvForward and isinstance(q[4], nn.BatchNorm2d)  # not folded either
