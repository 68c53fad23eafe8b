"""The built-in CIFAR teachers: classic ResNets with the published akamaster/pytorch_resnet_cifar10 weights."""

from __future__ import annotations

import dataclasses
from functools import partial

from dfq.models.cifar_resnet import CifarResNet
from dfq.models.registry import Teacher, published_classes_error, register_teacher
from dfq.models.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from dfq.models.weights import WeightFile, load_state_dict_checked, read_state_dict, resolve_weights

_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"

# The published files carry the sha256 prefix of their content in their name.
CIFAR10_RESNET_WEIGHTS = {
    20: WeightFile("resnet20-12fca82f.th", _AKAMASTER_URL + "resnet20-12fca82f.th"),
    32: WeightFile("resnet32-d509ac18.th", _AKAMASTER_URL + "resnet32-d509ac18.th"),
    44: WeightFile("resnet44-014dd654.th", _AKAMASTER_URL + "resnet44-014dd654.th"),
    56: WeightFile("resnet56-4bfd9763.th", _AKAMASTER_URL + "resnet56-4bfd9763.th"),
    110: WeightFile("resnet110-1d1ed7c2.th", _AKAMASTER_URL + "resnet110-1d1ed7c2.th"),
}

# These teachers were trained on [0, 1] RGB normalized with the ImageNet mean/std.
CIFAR10_SPEC = InputSpec(image_size=32, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=10)


def _build_cifar10_resnet(depth: int, *, checkpoint=None, pretrained: bool = True, trust_checkpoint: bool = False,
                          num_classes: int | None = None) -> Teacher:
    num_classes = num_classes or CIFAR10_SPEC.num_classes
    if pretrained and checkpoint is None and num_classes != CIFAR10_SPEC.num_classes:
        raise published_classes_error(f"cifar10_resnet{depth}", CIFAR10_SPEC.num_classes, num_classes)
    model = CifarResNet(depth, num_classes=num_classes)
    if checkpoint is not None or pretrained:
        path = resolve_weights(CIFAR10_RESNET_WEIGHTS[depth], checkpoint=checkpoint)
        load_state_dict_checked(model, read_state_dict(path, trust=trust_checkpoint), source=str(path))
    return Teacher(model.eval(), dataclasses.replace(CIFAR10_SPEC, num_classes=num_classes))


for _depth in CIFAR10_RESNET_WEIGHTS:
    register_teacher(f"cifar10_resnet{_depth}")(partial(_build_cifar10_resnet, _depth))
