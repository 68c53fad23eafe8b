"""Teachers from torchvision (`tv:<name>`) and timm (`timm:<name>`), each with its own pretrained mechanism."""

from __future__ import annotations

import difflib
import math

from torch import nn

from dfq.models.registry import Teacher, published_classes_error
from dfq.models.spec import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from dfq.models.weights import load_state_dict_checked, read_state_dict, resolve_weights


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown {kind} model {name!r}.{hint}")


def _weights_unavailable(name: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not get pretrained weights for {name!r} ({type(exc).__name__}: {exc}). "
        "Without internet, pass a local weights file with --checkpoint FILE (a state dict, "
        "optionally under 'state_dict' or 'model')."
    )


def _load_local(model: nn.Module, checkpoint, trust: bool) -> None:
    path = resolve_weights(None, checkpoint=checkpoint)
    load_state_dict_checked(model, read_state_dict(path, trust=trust), source=str(path))


def create_torchvision(name: str, *, checkpoint=None, pretrained: bool = True, trust_checkpoint: bool = False,
                       num_classes: int | None = None) -> Teacher:
    """A torchvision classifier; pretrained weights come from torchvision's own DEFAULT weights."""
    from torchvision import models

    known = models.list_models(module=models)
    if name not in known:
        raise _unknown("torchvision", name, known)
    weights = models.get_model_weights(name).DEFAULT
    published = len(weights.meta["categories"])
    num_classes = num_classes or published
    if pretrained and checkpoint is None and num_classes != published:
        raise published_classes_error(f"tv:{name}", published, num_classes)
    if checkpoint is not None or not pretrained:
        model = models.get_model(name, weights=None, num_classes=num_classes)
        if checkpoint is not None:
            _load_local(model, checkpoint, trust_checkpoint)
    else:
        try:
            model = models.get_model(name, weights=weights)
        except Exception as exc:
            raise _weights_unavailable(f"tv:{name}", exc) from exc
    t = weights.transforms()
    spec = InputSpec(
        image_size=t.crop_size[0],
        channels=3,
        mean=tuple(t.mean),
        std=tuple(t.std),
        num_classes=num_classes,
        resize_size=t.resize_size[0],
        interpolation=t.interpolation.value,
    )
    return Teacher(model.eval(), spec)


def create_timm(name: str, *, checkpoint=None, pretrained: bool = True, trust_checkpoint: bool = False,
                num_classes: int | None = None) -> Teacher:
    """A timm model; pretrained weights come from timm's own mechanism (Hugging Face hub and its cache)."""
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    use_hub = pretrained and checkpoint is None
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if use_hub and num_classes is not None:
        cfg = timm.models.get_pretrained_cfg(name)
        published = cfg.num_classes if cfg is not None else num_classes
        if published != num_classes:  # timm would give the published body a new, untrained classifier
            raise published_classes_error(f"timm:{name}", published, num_classes)
    try:
        model = timm.create_model(name, pretrained=use_hub, **extra)
    except Exception as exc:
        if not use_hub:
            raise
        raise _weights_unavailable(f"timm:{name}", exc) from exc
    if checkpoint is not None:
        _load_local(model, checkpoint, trust_checkpoint)
    cfg = resolve_data_config({}, model=model)
    size = cfg["input_size"][-1]
    spec = InputSpec(
        image_size=size,
        channels=cfg["input_size"][0],
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        num_classes=model.num_classes,
        resize_size=math.floor(size / cfg.get("crop_pct", 0.875)),
        interpolation=cfg.get("interpolation", "bilinear"),
    )
    return Teacher(model.eval(), spec)
