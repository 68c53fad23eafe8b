"""Non-finite weights, ranges and images are refused where they appear, with the place named."""

import pytest
import torch

from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, quantize_model, save_student
from dfq.quant.observers import QuantSpec
from dfq.quant.quantizer import TensorQuantizer
from generators import refine as refine_module
from generators.refine import RefineConfig, refine_images
from tests.generators.helpers import TINY_SPEC, tiny_teacher
from tests.quant.helpers import randomize_bn, tiny_net


def test_a_nan_calibration_batch_is_refused():
    student = quantize_model(randomize_bn(tiny_net()), QuantConfig(w_bits=8, a_bits=8, protocol="paper"))
    bad = torch.randn(4, 3, 8, 8)
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="calibration batch 1 holds non-finite values"):
        calibrate(student, [torch.randn(4, 3, 8, 8), bad])


def test_a_non_finite_observed_range_is_refused():
    q = TensorQuantizer(QuantSpec(8))
    q.observe(torch.tensor([0.0, float("inf")]))
    with pytest.raises(ValueError, match="observed range is not finite"):
        q.load_observed_range()
    assert not q._ready


def test_a_student_with_nan_weights_is_not_saved(tmp_path):
    student = quantize_model(randomize_bn(tiny_net()), QuantConfig(w_bits=8, a_bits=8, protocol="paper"))
    with torch.no_grad():
        student[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"the student holds non-finite values .* 0\.weight \(1\)"):
        save_student(student, tmp_path / "s", config=QuantConfig(), teacher="tiny")
    assert not (tmp_path / "s" / "student.safetensors").exists()


def test_a_teacher_checkpoint_with_nan_is_refused(weights_dir, tmp_path):
    state = torch.load(weights_dir / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)["state_dict"]
    state["module.linear.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.th"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"checkpoint .*nan\.th holds non-finite values .* linear\.weight \(1\)"):
        create_teacher("cifar10_resnet20", checkpoint=path)


def test_refinement_refuses_non_finite_pixels_in_and_out(monkeypatch):
    teacher = tiny_teacher()
    images, labels = torch.rand(4, 3, 8, 8), torch.arange(4)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite pixels .* check the generator"):
        refine_images(teacher, TINY_SPEC, bad, labels, RefineConfig(steps=1))
    monkeypatch.setattr(refine_module, "optimize_logits", lambda *a, **k: (torch.full_like(images, float("nan")), 0.0))
    with pytest.raises(ValueError, match="refinement produced non-finite pixels"):
        refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=1))
