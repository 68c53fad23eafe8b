import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfq import QuantConfig, calibrate, quantize_model
from dfq.export import ExportError, export_onnx
from dfq.export.check import OnnxModule, input_spec, integer_kernels, onnx_logits
from dfq.models import create_teacher
from dfq.models.spec import InputSpec
from tests.quant.helpers import randomize_bn

SPEC = InputSpec(image_size=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=4)


class ResidualNet(nn.Module):
    """A stem, one residual block whose addition is written as code (`out += x`), a strided block with a
    zero-padded shortcut, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(16)
        self.relu = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        out = self.bn_a(self.conv_a(x))
        out += x
        x = F.relu(out)
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 6))  # uneven: begin and end must not be swapped
        x = self.relu(self.bn_b(self.conv_b(x)) + short)
        return self.fc(torch.flatten(self.pool(x), 1))


def _student(model, bits, **config):
    torch.manual_seed(0)
    student = quantize_model(randomize_bn(model), QuantConfig(w_bits=bits, a_bits=bits, **config))
    calibrate(student, [torch.randn(32, 3, 8, 8)])
    return student.eval()


def _assert_same(path, student, x):
    """The runtime computes what the student computes (up to float rounding, here never at a tie)."""
    with torch.no_grad():
        ref = student(x)
    out = onnx_logits(path, [x])
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, rtol=0, atol=1e-4 * float(ref.abs().max())), float((out - ref).abs().max())


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_export_matches_the_student_and_runs_integer_kernels(bits, tmp_path):
    model = ResidualNet()
    with torch.no_grad():
        model.conv_b.weight.mul_(5)  # so that the final ReLU6 saturates
    student = _student(model, bits)
    path = export_onnx(student, SPEC, tmp_path / "m.onnx")
    # inputs three times wider than the calibration data: every quantizer clips somewhere
    _assert_same(path, student, 3 * torch.randn(64, 3, 8, 8))
    report = integer_kernels(path)
    assert report.all_integer(), report.format()
    assert report.integer == {"QLinearConv": 3, "QGemm": 1}
    assert report.integer_ops["QLinearAdd"] == 2 and report.integer_ops["QLinearGlobalAveragePool"] == 1


def test_cifar_resnet_exports_every_layer_as_an_integer_kernel(weights_dir, tmp_path):
    # trained weights: in a random-weight ResNet one float rounding at a tie upstream grows without bound
    teacher, spec = create_teacher("cifar10_resnet20", checkpoint=weights_dir / "resnet20-12fca82f.th")
    student = quantize_model(teacher.eval(), QuantConfig(w_bits=4, a_bits=4))
    calibrate(student, [torch.randn(16, 3, 32, 32)])
    path = export_onnx(student.eval(), spec, tmp_path / "r20.onnx", metadata={"teacher": "cifar10_resnet20"})
    report = integer_kernels(path)
    assert report.integer == {"QLinearConv": 19, "QGemm": 1} and not report.float_layers
    assert report.integer_ops == {"QLinearAdd": 9, "QLinearGlobalAveragePool": 1}
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = student(x)
    out = OnnxModule(path)(x)
    assert torch.allclose(out, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    assert input_spec(path) == spec


def test_refuses_what_it_cannot_write_as_integers(tmp_path):
    paper = _student(ResidualNet(), 4, protocol="paper")
    with pytest.raises(ExportError, match="BatchNorm is not folded"):
        export_onnx(paper, SPEC, tmp_path / "p.onnx")
    asym = _student(ResidualNet(), 4, w_symmetric=False)
    with pytest.raises(ExportError, match="symmetric"):
        export_onnx(asym, SPEC, tmp_path / "a.onnx")
    uncalibrated = quantize_model(randomize_bn(ResidualNet()), QuantConfig(w_bits=4, a_bits=4))
    with pytest.raises(ExportError, match="calibrate"):
        export_onnx(uncalibrated, SPEC, tmp_path / "u.onnx")
    gelu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    gelu(torch.randn(2, 3, 8, 8))
    with pytest.raises(ExportError, match="GELU is not exportable"):
        export_onnx(_student(gelu, 8), SPEC, tmp_path / "g.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_an_existing_file_is_kept_unless_asked(tmp_path):
    student = _student(ResidualNet(), 8)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_onnx(student, SPEC, path)
    assert path.read_bytes() == b"keep"
    export_onnx(student, SPEC, path, overwrite=True)
    assert path.stat().st_size > 1000


def test_float_layers_are_named(tmp_path):
    # a layer left in float reads its input in float, so the stem that makes that input cannot fuse either
    student = _student(ResidualNet(), 8, skip=("conv_a",))
    report = integer_kernels(export_onnx(student, SPEC, tmp_path / "m.onnx"))
    assert not report.all_integer()
    assert sorted(f.split()[1] for f in report.float_layers) == ["conv_a_Conv", "stem_0_Conv"]
    assert report.integer == {"QLinearConv": 1, "QGemm": 1}


def test_int4_packing_halves_the_weights_and_computes_the_same(tmp_path):
    student = _student(ResidualNet(), 4)
    plain = export_onnx(student, SPEC, tmp_path / "plain.onnx")
    packed = export_onnx(student, SPEC, tmp_path / "packed.onnx", pack_int4=True)
    assert packed.stat().st_size < plain.stat().st_size
    x = torch.randn(16, 3, 8, 8)
    assert torch.allclose(onnx_logits(packed, [x]), onnx_logits(plain, [x]), atol=1e-4)
    # onnxruntime runs the int4 convolutions in float: the check says so (the first and last layers, 8-bit
    # under deploy, stay integer)
    report = integer_kernels(packed)
    assert len(report.float_layers) == 2 and report.integer == {"QLinearConv": 1, "QGemm": 1}


class FloatReaders(nn.Module):
    """Tensors read both through a quantizer and, by a layer left in float, without one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU6()
        self.quantized = nn.Conv2d(4, 4, 1)
        self.skipped = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(64, 2)
        self.fc_skipped = nn.Linear(64, 2)

    def forward(self, x):
        a = self.act(self.conv(x))  # saturates (weights x5 below): float readers must see the clip at 6
        y = self.quantized(a) + self.skipped(a)
        f = torch.flatten(y[:, :, ::2, ::2], 1)  # read by a quantized and a float linear
        return self.fc(f) + self.fc_skipped(f)


def test_float_readers_of_a_quantized_tensor_read_its_float_value(tmp_path):
    model = FloatReaders()
    with torch.no_grad():
        model.conv.weight.mul_(5)
    student = _student(model, 4, skip=("skipped", "fc_skipped"))
    path = export_onnx(student, SPEC, tmp_path / "m.onnx")
    _assert_same(path, student, 3 * torch.randn(32, 3, 8, 8))


def test_additions_with_arguments_it_cannot_write_are_refused(tmp_path):
    class Alpha(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.add(self.a(x), self.b(x), alpha=3).flatten(1)

    with pytest.raises(ExportError, match="alpha"):
        export_onnx(_student(Alpha(), 8), SPEC, tmp_path / "m.onnx")


class PoolFanOut(nn.Module):
    """A max-pooled tensor read by a convolution and by an addition (ResNet-18's stem)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(torch.relu(self.conv(x) + x), 1), 1))


def test_a_pooled_tensor_read_twice_gets_one_quantize_pair(tmp_path):
    import onnx

    student = _student(PoolFanOut(), 8)
    path = export_onnx(student, SPEC, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    pool = next(n for n in graph.node if n.op_type == "MaxPool")
    readers = [n.op_type for n in graph.node if pool.output[0] in n.input]
    assert readers == ["QuantizeLinear"]  # one pair for both readers, so onnxruntime runs the pool in int8
    _assert_same(path, student, 3 * torch.randn(16, 3, 8, 8))
    report = integer_kernels(path)
    assert report.all_integer() and report.integer_ops["QLinearAdd"] == 1


def test_a_bias_that_saturates_int32_is_saturated_alike(tmp_path):
    import onnx
    from onnx import numpy_helper

    from dfq.quant.modules import BIAS_LIMIT, bias_codes

    model = randomize_bn(ResidualNet())
    with torch.no_grad():
        model.stem[0].weight[0].zero_()  # a dead channel: weight scale at its floor, bias / scale beyond int32
        model.stem[1].bias[0] = 50.0
    student = quantize_model(model, QuantConfig(w_bits=8, a_bits=8))
    calibrate(student, [torch.randn(32, 3, 8, 8)])
    conv = student.eval().stem[0]
    codes = bias_codes(conv.bias.detach(), conv.bias_scale())
    assert codes[0] == BIAS_LIMIT  # saturated, positive (float32 had made 2^31 - 1 into -2^31)
    path = export_onnx(student, SPEC, tmp_path / "m.onnx")
    written = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    assert (written["stem_0_bias_int"] == codes.numpy()).all()
    # the student adds exactly what the file's bias dequantizes to
    assert torch.equal(conv.quantized_bias().detach(),
                       torch.tensor(written["stem_0_bias_int"]).float() * torch.tensor(written["stem_0_bias_scale"]))
