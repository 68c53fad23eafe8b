"""ImageNet-size teachers (random weights, 224 pixels) through the whole pipeline: generator, refinement,
calibration, reconstruction (with a memory budget that forces pools), distillation and evaluation."""

import math
import warnings

import pytest
import torch
from PIL import Image

from dfq.models import SpecOverrides, create_teacher, is_known_teacher
from dfq.quant import QuantConfig, load_student
from dfq.quant import reconstruct as recon_module
from dfq.quant.reconstruct import ReconstructConfig
from generators import GeneratorTrainConfig, train_generator
from generators.refine import RefineConfig
from gznq import PipelineConfig, run_pipeline
from gznq.distill import DistillConfig

pytestmark = pytest.mark.slow

# min/max observers: the MSE ones the pipeline ships with search a grid per tensor, most of a tiny run's time at
# 224 (they are exercised at 32 pixels elsewhere in the suite)
MODELS = ["tv:resnet18", "tv:resnet50", "tv:mobilenet_v2", "timm:efficientnet_b0", "timm:regnetx_002"]


@pytest.fixture(scope="module")
def images_224(tmp_path_factory):
    """An ImageFolder of 10 classes, one image each, larger than 224 so that evaluation resizes and crops."""
    root = tmp_path_factory.mktemp("imagenet_like")
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        (root / f"class{c}").mkdir()
        for i in range(1):
            pixels = (torch.rand(260, 300, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.parametrize("name", MODELS)
def test_the_whole_pipeline_at_224(name, images_224, tmp_path):
    teacher = create_teacher(name, pretrained=False, overrides=SpecOverrides(num_classes=10))
    assert teacher.spec.image_size == 224 and is_known_teacher(name)
    train_generator(teacher.model, teacher.spec, tmp_path / "gen", teacher_name=name,
                    config=GeneratorTrainConfig(steps=1, batch_size=4), progress=False)
    config = PipelineConfig(
        model=name, source=f"generator:{tmp_path / 'gen'}", methods=("reconstruct", "distill"),
        quant=QuantConfig(w_bits=4, a_bits=4, protocol="deploy", weight_observer="minmax", act_observer="minmax"),
        calib_images=4, batch_size=4, refine=RefineConfig(steps=1),
        recon=ReconstructConfig(iterations=2, batch_size=1, memory_mb=8), recon_augment=0,
        distill=DistillConfig(steps=1, batch_size=4, generator_every=0), eval_data=str(images_224), out=str(tmp_path / "student"),
        progress=False, workers=0,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_pipeline(config, teacher=teacher)
    assert not [w for w in caught if "stay in float" in str(w.message) and "conv/linear" in str(w.message)]
    report = result.report
    assert report["num_images"] == 10 and report["student"] == str(tmp_path / "student")
    # early blocks' inputs and targets at 224 exceed 8 MB for 4 images: they trained on pools
    assert any(r["pool"] < 4 for r in report["reconstruct"])
    assert all(math.isfinite(r["mse_before"]) and math.isfinite(r["mse_after"]) for r in report["reconstruct"])
    student, meta = load_student(tmp_path / "student")
    assert meta["input_spec"]["image_size"] == 224 and meta["input_spec"]["num_classes"] == 10
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(student(x), result.student(x))


def test_reconstruction_memory_stays_within_its_budget(monkeypatch):
    """What the reconstruction holds for a block (its inputs, targets and teacher inputs, alive at once) is
    measured at every collection: at most the budget, where holding every image's would take twice more."""
    from dfq.quant import calibrate, quantize_model
    from tests.quant.test_reconstruct import held_bytes_per_collection

    teacher, _ = create_teacher("tv:resnet18", pretrained=False, overrides=SpecOverrides(num_classes=10))
    student = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    images = [torch.randn(4, 3, 224, 224) for _ in range(2)]
    calibrate(student, images)
    peaks = held_bytes_per_collection(monkeypatch)
    budget_mb = 6
    records = recon_module.reconstruct(student, teacher, images, ReconstructConfig(
        iterations=2, batch_size=1, memory_mb=budget_mb, last_block=True))
    assert max(peaks) <= budget_mb * 2**20
    pooled = [r for r in records if r["pool"] < 8]
    assert pooled and pooled[0]["block"] in ("conv1", "layer1.0")
    with pytest.raises(ValueError, match="fewer than one batch"):
        recon_module.reconstruct(student, teacher, images, ReconstructConfig(iterations=1, batch_size=8,
                                                                             memory_mb=0.5))
