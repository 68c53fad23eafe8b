import torch
from torch import nn

from dfq.models.spec import InputSpec
from generators.bn_stats import BNStatsRecorder, bn_kl_loss
from generators.network import normalize

TINY_SPEC = InputSpec(image_size=8, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=4)


def tiny_teacher(seed: int = 0) -> nn.Module:
    """A small BN classifier on 8x8 images with non-trivial running statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def batch_bn_kl(teacher: nn.Module, images: torch.Tensor) -> float:
    """GZNQ's BN loss of one batch of [0, 1] images (TINY_SPEC normalization) on the teacher."""
    with torch.no_grad(), BNStatsRecorder(teacher) as rec:
        teacher(normalize(images, TINY_SPEC.mean, TINY_SPEC.std))
    return bn_kl_loss(rec.stats).item()
