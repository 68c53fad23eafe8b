import torch

from bench.set_stats import set_stats, standardized
from generators.network import normalize
from tests.generators.helpers import TINY_SPEC, tiny_teacher


def test_standardized_sets_each_channel_to_mean_0_std_1_after_normalization():
    g = torch.Generator().manual_seed(0)
    # normalized images, uniform per channel (so standardized within +-1.74: inside the pixel range below)
    # with channel means 0.2, -0.1, 0 and spreads 1.5, 0.6, 1.0
    images = torch.rand(64, 3, 8, 8, generator=g) * torch.tensor([1.5, 0.6, 1.0]).view(1, 3, 1, 1) \
        + torch.tensor([0.2, -0.1, 0.0]).view(1, 3, 1, 1)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pixels = standardized(images, mean, std)
    assert pixels.min() >= 0 and pixels.max() <= 1
    back = normalize(pixels, mean, std)
    torch.testing.assert_close(back.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(back.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_set_stats_reads_contrast_confidence_and_bn_kl():
    teacher = tiny_teacher()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 3, 8, 8, generator=g) * 2.0 for _ in range(2)]
    stats = set_stats(teacher, batches)
    assert stats["images"] == 32 and abs(stats["std"] - 2.0) < 0.15
    assert len(stats["channel_std"]) == 3 and 1 / TINY_SPEC.num_classes <= stats["confidence"] <= 1
    assert 0 <= stats["below_0.9"] <= 1 and stats["batch_bn_kl"] > 0
