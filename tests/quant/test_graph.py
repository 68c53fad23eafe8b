import json

import pytest
import torch
from torch import nn

from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, load_student, quantize_model, save_student
from dfq.quant.serialization import META_FILE
from dfq.quant.graph import functional_ops_to_modules
from dfq.quant.ops import Add, QuantAdaptiveAvgPool2d, QuantAdd
from tests.quant.helpers import randomize_bn


class Block(nn.Module):
    """torchvision's BasicBlock pattern: one ReLU module used twice, the residual added in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(Block(), Block())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.blocks(torch.relu(self.stem(x)))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1) + 0.0 * x.size(0))


def test_functional_additions_and_pooling_become_modules_with_the_same_function():
    model = randomize_bn(Net())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    rewritten, names = functional_ops_to_modules(model)
    assert sorted(names) == ["", "blocks.0", "blocks.1"]
    assert isinstance(rewritten.blocks[0].add0, Add) and isinstance(rewritten.pool0, nn.AdaptiveAvgPool2d)
    assert isinstance(rewritten.blocks, nn.Sequential)  # the nesting reconstruction reads is kept
    assert set(rewritten.state_dict()) == set(Net().state_dict())
    with torch.no_grad():
        assert torch.equal(rewritten(x), ref)  # `+ 0.0 * x.size(0)` is not a tensor addition: left as code


def test_deploy_quantizes_additions_and_pooling_and_shares_a_tensors_quantizer():
    student = quantize_model(randomize_bn(Net()), QuantConfig(w_bits=4, a_bits=4))
    block = student.blocks[1]
    assert isinstance(block.add0, QuantAdd) and isinstance(student.pool0, QuantAdaptiveAvgPool2d)
    # the block's input is read by the addition at ops_bits (8) and by conv1 at 4 bits: conv1 requantizes it
    wide, narrow = block.add0.second_input_quantizer, block.conv1.input_quantizer
    assert (wide.bits, narrow.bits) == (8, 4) and narrow.source is wide and wide.source is None
    assert block.add0.input_quantizer is not wide
    x = torch.randn(16, 3, 8, 8)
    calibrate(student, [x])
    seen = {}
    hooks = [q.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, (i[0], o)))
             for k, q in (("wide", wide), ("narrow", narrow), ("add", block.add0.input_quantizer))]
    with torch.no_grad():
        student.eval()(x)
    for h in hooks:
        h.remove()
    codes = seen["add"][1] / block.add0.input_quantizer.scale + block.add0.input_quantizer.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= 0 and codes.max() <= 255
    block_input = seen["wide"][0]
    with torch.no_grad():
        narrow.set_source(None)
        assert torch.equal(seen["narrow"][1], narrow(wide(block_input)))  # 4-bit of the 8-bit tensor
        narrow.set_source(wide)
    # at one width for all, one quantizer
    same = quantize_model(randomize_bn(Net()), QuantConfig(w_bits=4, a_bits=4, ops_bits=4))
    assert same.blocks[1].conv1.input_quantizer is same.blocks[1].add0.second_input_quantizer


def test_paper_protocol_and_old_students_keep_additions_in_float(tmp_path):
    student = quantize_model(randomize_bn(Net()), QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    assert not any(isinstance(m, (QuantAdd, Add)) for m in student.modules())
    # a deploy student saved before quantize_ops existed: its JSON lacks the field, and it loads as it was made
    teacher, _ = create_teacher("cifar10_resnet20", pretrained=False)
    config = QuantConfig(w_bits=4, a_bits=4, quantize_ops=False)
    old = quantize_model(randomize_bn(teacher), config)
    calibrate(old, [torch.randn(8, 3, 32, 32)])
    saved = save_student(old, tmp_path / "old", config=config, teacher="cifar10_resnet20")
    meta = json.loads((saved / META_FILE).read_text())
    del meta["quant_config"]["quantize_ops"], meta["quant_config"]["ops_bits"]
    (saved / META_FILE).write_text(json.dumps(meta))
    loaded, _ = load_student(saved)
    assert not any(isinstance(m, (QuantAdd, Add)) for m in loaded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), old.eval()(x))


def test_deploy_bias_lies_on_the_int32_grid_of_input_times_weight_scale():
    teacher, _ = create_teacher("cifar10_resnet20", pretrained=False)
    student = quantize_model(randomize_bn(teacher), QuantConfig(w_bits=8, a_bits=8))
    conv = student.layer1[0].conv1
    assert conv.quantized_bias() is conv.bias  # no input range yet: the bias as stored
    calibrate(student, [torch.randn(8, 3, 32, 32)])
    scale = conv.input_quantizer.scale * conv.weight_quantizer.scale
    steps = conv.quantized_bias().detach() / scale
    assert torch.allclose(steps, steps.round(), atol=1e-3)
    assert not torch.equal(conv.quantized_bias(), conv.bias)


def test_a_forward_that_depends_on_train_mode_is_left_as_it_is():
    class Dropping(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return nn.functional.dropout(self.conv(x), 0.5, training=self.training) + x

    model = nn.Sequential(Dropping(), nn.Flatten(), nn.Linear(3 * 64, 2))
    with pytest.warns(UserWarning, match="depends on train/eval mode"):
        rewritten, names = functional_ops_to_modules(model)
    assert names == [] and not isinstance(rewritten[0], torch.fx.GraphModule)


def test_a_narrow_reader_does_not_move_a_tracked_range_twice():
    student = quantize_model(randomize_bn(Net()), QuantConfig(w_bits=4, a_bits=4))
    calibrate(student, [torch.randn(8, 3, 8, 8)])
    wide = student.blocks[1].add0.second_input_quantizer
    calls = []
    original = wide._track
    wide._track = lambda x: (calls.append(1), original(x))[1]
    for q in (wide, student.blocks[1].conv1.input_quantizer):
        q.track_momentum = 0.1
    student.train()(torch.randn(8, 3, 8, 8))
    assert len(calls) == 1
