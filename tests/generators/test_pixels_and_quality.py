import pytest
import torch

from generators.pixel_opt import PixelOptConfig, load_pixels, optimize_pixels, save_pixels
from generators.quality import capture_penultimate, measure_quality, within_class_distance
from tests.generators.helpers import TINY_SPEC, batch_bn_kl, tiny_teacher


def test_pixel_optimization_lowers_the_bn_loss_and_round_trips(tmp_path):
    teacher = tiny_teacher()
    config = PixelOptConfig(num_images=32, batch_size=16, iterations=40, lr=0.1, ce_weight=0.0, seed=0)
    images, labels, seconds = optimize_pixels(teacher, TINY_SPEC, config, progress=False)
    assert images.shape == (32, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert torch.bincount(labels).tolist() == [8, 8, 8, 8] and seconds > 0
    start = torch.sigmoid(torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert batch_bn_kl(teacher, images) < 0.5 * batch_bn_kl(teacher, start)
    save_pixels(tmp_path / "p", images, labels, teacher="tiny", config=config, seconds=seconds)
    again, again_labels, meta = load_pixels(tmp_path / "p", teacher_name="tiny")
    assert torch.equal(again, images) and torch.equal(again_labels, labels) and meta["num_images"] == 32
    with pytest.raises(ValueError, match="optimized for 'tiny'"):
        load_pixels(tmp_path / "p", teacher_name="cifar10_resnet20")
    with pytest.raises(FileNotFoundError, match="not a pixel-optimized set"):
        load_pixels(tmp_path / "none")


def test_within_class_distance_on_known_points():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])  # class 0: distance 5; class 1: 2; class 2 has one image
    assert within_class_distance(feats, labels) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="at least two"):
        within_class_distance(feats[:1], labels[:1])


def test_penultimate_capture_hooks_the_last_linear_and_cleans_up():
    teacher = tiny_teacher()
    x = torch.randn(3, 3, 8, 8)
    with capture_penultimate(teacher) as feats:
        teacher(x)
    assert feats[-1].shape == (3, 8)
    assert torch.allclose(feats[-1], teacher[:-1](x))
    assert not teacher[-1]._forward_pre_hooks


def test_collapsed_classes_have_zero_pixel_diversity_against_real():
    """Copies of one image per class: pixel diversity is exactly zero however the features look."""
    teacher = tiny_teacher()
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    one_per_class = torch.randn(4, 3, TINY_SPEC.image_size, TINY_SPEC.image_size)
    collapsed = [(one_per_class[labels], labels)]
    real = [(torch.randn(32, 3, TINY_SPEC.image_size, TINY_SPEC.image_size), labels)]
    report = measure_quality(teacher, collapsed, real_batches=real).to_dict()
    assert report["pixel_diversity"] == 0.0 and report["pixel_diversity_ratio"] == 0.0
    assert report["real_pixel_diversity"] > 0 and report["diversity"] == pytest.approx(0.0, abs=1e-4)


def test_confidence_is_the_mean_top_probability():
    teacher = tiny_teacher()
    torch.manual_seed(1)
    x, labels = torch.randn(2, 16, 3, 8, 8), torch.arange(4).repeat(4)
    report = measure_quality(teacher, [(x[0], labels)], real_batches=[(x[1], labels)])
    with torch.no_grad():
        expected = [teacher(xi).softmax(1).max(1).values.mean().item() for xi in x]
    assert report.confidence == pytest.approx(expected[0]) and report.real_confidence == pytest.approx(expected[1])
    assert 0.25 <= report.confidence <= 1
