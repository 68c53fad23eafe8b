"""One factory for teachers: `create_teacher(name)` for the CIFAR zoo, `tv:<name>` and `timm:<name>`."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from dfq.models.spec import InputSpec, SpecOverrides

TeacherBuilder = Callable[..., "Teacher"]
_REGISTRY: dict[str, TeacherBuilder] = {}


class Teacher(NamedTuple):
    """A full-precision teacher in eval mode and its input spec; unpacks as (model, spec)."""

    model: nn.Module
    spec: InputSpec


def register_teacher(name: str) -> Callable[[TeacherBuilder], TeacherBuilder]:
    """Register a builder `fn(*, checkpoint, pretrained, trust_checkpoint, num_classes) -> Teacher` under `name`
    (`num_classes` None: the model's own)."""

    def wrap(fn: TeacherBuilder) -> TeacherBuilder:
        if name in _REGISTRY:
            raise ValueError(f"teacher {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def list_teachers() -> list[str]:
    """Names of the registered teachers (tv:* and timm:* models are not listed)."""
    return sorted(_REGISTRY)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def is_known_teacher(name: str) -> bool:
    """Whether `create_teacher` can build `name` (a registered name, or any `tv:` / `timm:` name)."""
    return name in _REGISTRY or name.startswith(("tv:", "timm:"))


def create_teacher(name: str, *, checkpoint: str | os.PathLike | None = None, pretrained: bool = True,
                   trust_checkpoint: bool = False, overrides: SpecOverrides | None = None) -> Teacher:
    """Build a teacher by name, load its weights and put it in eval mode.

    Args:
        name: a registered name (see `list_teachers()`), `tv:<torchvision model>` or `timm:<timm model>`.
        checkpoint: a local weights file; takes precedence over every other source. A state dict, or a dict
            holding one (`dfq.models.weights.read_state_dict`), as a PyTorch or safetensors file.
        pretrained: load published weights; False gives a randomly initialised model (tests, shapes).
        trust_checkpoint: allow a checkpoint that needs full unpickling (which can run code from the file).
        overrides: the input normalization, image size or number of classes the weights were trained with,
            where they differ from the model's defaults (`SpecOverrides`).

    Raises:
        ValueError: unknown name; a checkpoint that does not fit the model; a model without BatchNorm;
            another number of classes with published weights (which have their own).
        FileNotFoundError / RuntimeError: weights that cannot be found or downloaded.
    """
    from dfq.models import external  # lazy: importing timm costs seconds

    overrides = overrides or SpecOverrides()
    kwargs = dict(checkpoint=checkpoint, pretrained=pretrained, trust_checkpoint=trust_checkpoint)
    if overrides.num_classes is not None:  # builders registered before num_classes existed do not take it
        kwargs["num_classes"] = overrides.num_classes
    if name.startswith("tv:"):
        teacher = external.create_torchvision(name[3:], **kwargs)
    elif name.startswith("timm:"):
        teacher = external.create_timm(name[5:], **kwargs)
    elif name in _REGISTRY:
        try:
            teacher = _REGISTRY[name](**kwargs)
        except TypeError as exc:
            if "num_classes" not in str(exc):
                raise
            raise ValueError(f"the builder registered as {name!r} takes no num_classes; it cannot build another "
                             "number of classes") from None
    else:
        close = difflib.get_close_matches(name, list_teachers(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Known: {', '.join(list_teachers())}; "
            "or any torchvision classifier as 'tv:<name>' and any timm model as 'timm:<name>'."
        )
    if not has_batchnorm(teacher.model):
        raise ValueError(
            f"model {name!r} has no BatchNorm layers. gznq synthesizes data by making generated images "
            "reproduce the running mean and variance stored in a teacher's BatchNorm layers; a model without "
            "them gives the generator nothing to match. Use a model with BatchNorm (ResNet, MobileNet, ...)."
        )
    teacher = Teacher(teacher.model.eval(), overrides.apply(teacher.spec))
    check_spec_fits(teacher.model, teacher.spec, name=name)
    return teacher


def check_spec_fits(model: nn.Module, spec: InputSpec, *, name: str = "the model") -> None:
    """One forward pass of a blank image of the spec's size (in eval mode, without gradients): the model must take
    it and give spec.num_classes logits.

    Raises:
        ValueError: the input does not fit (channels, a fixed-size head) or the logits are not num_classes wide.
    """
    import torch

    from dfq.modes import restored

    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    x = torch.zeros(1, spec.channels, spec.image_size, spec.image_size, device=device, dtype=dtype)
    try:
        with torch.no_grad(), restored(model):
            out = model.eval()(x)
    except (RuntimeError, AssertionError, ValueError) as exc:  # timm asserts on input sizes
        raise ValueError(f"{name} does not take {spec.channels}x{spec.image_size}x{spec.image_size} inputs ({exc}); "
                         "give the image size and channels it was trained with") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != spec.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} gives logits of shape {shape} for one image, but its spec says {spec.num_classes} "
                         "classes; give the number of classes its classifier has (--num-classes, InputSpec.num_classes)")


def published_classes_error(name: str, published: int, asked: int) -> ValueError:
    """The error for a class count other than the published weights' without a checkpoint of one's own."""
    return ValueError(
        f"{name}'s published weights have {published} classes, not {asked}: give the weights trained with "
        f"{asked} classes with --checkpoint FILE (checkpoint=... in Python), or leave --num-classes out"
    )
