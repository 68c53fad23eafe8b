import pytest
import torch
from torch import nn

from dfq.models import create_teacher
from dfq.quant import (
    LayerOverride,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    calibrate,
    dequantize_model,
    quantize_model,
    summarize,
)
from tests.quant.helpers import randomize_bn, tiny_net


def _quant_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


@pytest.fixture
def resnet20():
    model, _ = create_teacher("cifar10_resnet20", pretrained=False)
    return randomize_bn(model)


def test_paper_protocol_quantizes_every_layer_at_target_bits_and_keeps_bn(resnet20):
    q = quantize_model(resnet20, QuantConfig(w_bits=4, a_bits=3, protocol="paper"))
    layers = _quant_layers(q)
    assert len(layers) == 20  # 19 convs + linear
    assert all(m.weight_quantizer.bits == 4 for m in layers.values())
    assert all(not m.weight_quantizer.spec.symmetric and m.weight_quantizer.spec.axis == 0 for m in layers.values())
    assert layers["conv1"].input_quantizer is None  # the network input stays float
    assert all(m.input_quantizer.bits == 3 for n, m in layers.items() if n != "conv1")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in q.modules()) == 19
    assert isinstance(resnet20.conv1, nn.Conv2d) and not isinstance(resnet20.conv1, QuantConv2d)  # original untouched


def test_deploy_protocol_folds_bn_and_keeps_first_and_last_at_8_bits(resnet20):
    q = quantize_model(resnet20, QuantConfig(w_bits=4, a_bits=4, protocol="deploy"))
    layers = _quant_layers(q)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    assert layers["conv1"].weight_quantizer.bits == 8 and layers["conv1"].input_quantizer.bits == 8
    assert layers["linear"].weight_quantizer.bits == 8 and layers["linear"].input_quantizer.bits == 8
    assert layers["layer2.1.conv2"].weight_quantizer.bits == 4 and layers["layer2.1.conv2"].input_quantizer.bits == 4
    assert layers["layer2.1.conv2"].weight_quantizer.spec.symmetric
    assert layers["layer2.1.conv2"].bias is not None  # folded BN lives in the bias


def test_skip_and_overrides(resnet20):
    config = QuantConfig(
        w_bits=4, a_bits=4, protocol="paper", skip=("layer3.*",),
        overrides=(LayerOverride("layer1.0.conv1", w_bits=6, a_bits=5), LayerOverride("linear", a_bits=8)),
    )
    q = quantize_model(resnet20, config)
    layers = _quant_layers(q)
    assert not any(n.startswith("layer3") for n in layers)
    assert type(q.layer3[0].conv1) is nn.Conv2d
    assert (layers["layer1.0.conv1"].weight_quantizer.bits, layers["layer1.0.conv1"].input_quantizer.bits) == (6, 5)
    assert (layers["linear"].weight_quantizer.bits, layers["linear"].input_quantizer.bits) == (4, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"w_bits": 1}, "w_bits must be an integer from 2 to 8"),
        ({"a_bits": 9}, "a_bits must be an integer from 2 to 8"),
        ({"protocol": "fast"}, "unknown protocol 'fast'"),
        ({"act_observer": "kl"}, "unknown observer 'kl'"),
        ({"first_layer_bits": 12}, "first_layer_bits must be"),
        ({"overrides": ({"pattern": "linear", "w_bits": 1},)}, "w_bits of override .linear."),
    ],
)
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_pattern_that_matches_nothing_is_refused(resnet20):
    with pytest.raises(ValueError, match="pattern 'layer4.*' matches no quantizable layer"):
        quantize_model(resnet20, QuantConfig(skip=("layer4.*",)))


def test_model_without_conv_or_linear_is_refused():
    with pytest.raises(ValueError, match="has no Conv2d or Linear layer"):
        quantize_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), QuantConfig())


def test_config_round_trips_through_a_dict():
    config = QuantConfig(w_bits=3, a_bits=5, protocol="paper", overrides=(LayerOverride("x*", 4),), skip=("y",))
    again = QuantConfig.from_dict(config.to_dict())
    assert again == config
    with pytest.raises(ValueError, match="unknown QuantConfig fields"):
        QuantConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_w8a8_on_tiny_net_is_close_and_to_float_restores_the_float_layers():
    model = randomize_bn(tiny_net())
    x = torch.randn(16, 3, 8, 8)
    q = quantize_model(model, QuantConfig(w_bits=8, a_bits=8, protocol="deploy"))
    calibrate(q, [x])
    with torch.no_grad():
        ref, out = model(x), q(x)
        assert ((ref - out).norm() / ref.norm()).item() < 0.02
        back = dequantize_model(q)
        assert not _quant_layers(back)
        assert ((ref - back(x)).norm() / ref.norm()).item() < 1e-5  # folded float model


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2", "timm:resnet18"])
def test_larger_models_quantize_and_calibrate(name):
    model, _ = create_teacher(name, pretrained=False)
    randomize_bn(model)
    x = torch.randn(2, 3, 64, 64)
    for protocol in ("paper", "deploy"):
        q = quantize_model(model, QuantConfig(w_bits=8, a_bits=8, protocol=protocol))
        calibrate(q, [x])
        with torch.no_grad():
            ref, out = model(x), q(x)
        assert torch.isfinite(out).all()
        assert torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0) > 0.98


def test_summary_counts_bits_and_compression(resnet20):
    q = quantize_model(resnet20, QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    s = summarize(q)
    assert len(s.layers) == 20
    conv_linear = sum(m.weight.numel() for m in _quant_layers(q).values())
    others = sum(p.numel() for n, p in q.named_parameters() if "quantizer" not in n) - conv_linear
    assert s.quantized_weight_bits == conv_linear * 4 + others * 32
    assert s.float_weight_bits == 32 * (conv_linear + others)
    assert s.compression_ratio == pytest.approx(s.float_weight_bits / s.quantized_weight_bits)
    text = s.format()
    assert "layer1.0.conv1" in text and "compression" in text
