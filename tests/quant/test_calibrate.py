import pytest
import torch
from torch.utils.data import DataLoader, Subset

from dfq.data import load_dataset, real_calibration_loader, stratified_indices
from dfq.evaluate import evaluate
from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, calibration_mode, quantize_model, quantizers
from tests.quant.helpers import randomize_bn, tiny_net


def _quantized_tiny():
    return quantize_model(randomize_bn(tiny_net()), QuantConfig(w_bits=8, a_bits=8, protocol="paper"))


def test_calibrate_sets_ranges_from_batches_and_restores_modes():
    q = _quantized_tiny().train()
    batches = [(torch.randn(8, 3, 8, 8), torch.zeros(8)) for _ in range(3)]
    calibrate(q, batches)
    assert q.training and all(m.training for m in q.modules())
    ready = {name: qz._ready for name, qz in quantizers(q)}
    assert all(ready.values())
    assert not any(qz.calibrating for _, qz in quantizers(q))


def test_calibrate_accepts_a_forward_loop_and_num_batches():
    q = _quantized_tiny()
    calls = []

    def loop(model):
        calls.append(1)
        model(torch.randn(4, 3, 8, 8))

    calibrate(q, loop)
    assert calls == [1]

    torch.manual_seed(0)
    pulled = []

    def endless():
        while True:
            pulled.append(torch.randn(2, 3, 8, 8))
            yield pulled[-1]

    q = calibrate(_quantized_tiny(), endless(), num_batches=2)
    assert len(pulled) == 2  # not one more: on a refined stream each batch costs seconds
    assert all(qz._ready for name, qz in quantizers(q) if name.endswith("input_quantizer"))
    with torch.no_grad():  # the second conv's range covers both batches (see test_range_matches_the_data_seen)
        expected = q[2](q[1](q[0](torch.cat(pulled)))).max()
    assert q[3].input_quantizer.range()[1].item() == pytest.approx(expected.item(), rel=1e-5)


def test_range_matches_the_data_seen():
    q = _quantized_tiny()
    x = torch.randn(16, 3, 8, 8)
    calibrate(q, [x])
    # the second conv sees ReLU outputs of the first (whose weights are already quantized and whose
    # input, the network input, stays float under the paper protocol): its observed minimum is 0
    lo, hi = q[3].input_quantizer.range()
    assert lo.item() == 0.0
    with torch.no_grad():
        expected = q[2](q[1](q[0](x))).max()
    assert hi.item() == pytest.approx(expected.item(), rel=1e-5)


def test_an_error_inside_calibration_restores_everything():
    q = _quantized_tiny().train()
    with pytest.raises(ZeroDivisionError):
        with calibration_mode(q):
            q(torch.randn(2, 3, 8, 8))
            raise ZeroDivisionError
    assert q.training
    assert not any(qz.calibrating or qz._ready for name, qz in quantizers(q) if "input" in name)


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        calibrate(_quantized_tiny(), [])


def test_float_model_has_nothing_to_calibrate():
    with pytest.raises(ValueError, match="no input quantizers"):
        calibrate(tiny_net(), [torch.randn(1, 3, 8, 8)])


def test_w8a8_deploy_on_512_real_images_stays_within_half_a_point(weights_dir, cifar_train_dir, cifar_test_dir):
    teacher, spec = create_teacher("cifar10_resnet20", checkpoint=weights_dir / "resnet20-12fca82f.th")
    student = quantize_model(teacher, QuantConfig(w_bits=8, a_bits=8, protocol="deploy"))
    calibrate(student, real_calibration_loader(cifar_train_dir, spec, num_images=512, seed=0))
    test = load_dataset(cifar_test_dir, spec)
    loader = DataLoader(Subset(test, stratified_indices(test.targets, 1000)), batch_size=250)
    result = evaluate(student, loader, teacher=teacher, progress=False)
    assert result.num_images == 1000
    assert abs(result.teacher_top1 - result.top1) <= 0.5
    assert result.agreement >= 97.0
