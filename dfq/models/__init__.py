"""Teacher models: the CIFAR zoo, torchvision and timm classifiers behind one factory."""

from dfq.models import zoo  # noqa: F401  (registers the CIFAR teachers)
from dfq.models.cifar_resnet import CifarResNet
from dfq.models.registry import (
    Teacher,
    create_teacher,
    has_batchnorm,
    is_known_teacher,
    list_teachers,
    register_teacher,
)
from dfq.models.spec import InputSpec, SpecOverrides

__all__ = ["CifarResNet", "InputSpec", "SpecOverrides", "Teacher", "create_teacher", "has_batchnorm", "is_known_teacher",
           "list_teachers", "register_teacher"]
