"""A teacher of one's own: input spec overrides, and checkpoints in the formats training code writes."""

import argparse

import pytest
import torch
from safetensors.torch import save_file

from dfq.models import CifarResNet, InputSpec, SpecOverrides, create_teacher
from dfq.models.weights import read_state_dict

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def test_overrides_replace_what_they_name_and_keep_the_rest():
    spec = InputSpec(image_size=224, channels=3, mean=(0.4, 0.4, 0.4), std=(0.2, 0.2, 0.2), num_classes=1000,
                     resize_size=256)
    out = SpecOverrides(image_size=160, mean=CIFAR_MEAN).apply(spec)
    assert (out.image_size, out.mean, out.std, out.num_classes) == (160, CIFAR_MEAN, (0.2, 0.2, 0.2), 1000)
    assert out.resize_size == 183  # 160 * 256 / 224 = 182.9: the crop keeps its share
    assert SpecOverrides().apply(spec) == spec
    recorded = {"image_size": 160, "mean": list(CIFAR_MEAN), "std": [0.2] * 3, "num_classes": 5, "channels": 3,
                "resize_size": 183, "interpolation": "bilinear"}
    assert SpecOverrides.from_dict(recorded) == SpecOverrides(160, CIFAR_MEAN, (0.2, 0.2, 0.2), 5)
    assert SpecOverrides.from_dict(SpecOverrides(num_classes=7).to_dict()) == SpecOverrides(num_classes=7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(std=(0.2, 0.0, 0.2)), "std must be positive"),
    (dict(mean=(0.5, float("nan"), 0.5)), "mean must be finite"),
    (dict(num_classes=1), "at least 2"),
    (dict(image_size=4), "at least 8 pixels"),
    (dict(mean=(0.5, 0.5), std=(0.2, 0.2, 0.2)), "one value per input channel"),
])
def test_bad_overrides_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpecOverrides(**kwargs)


def test_mean_of_the_wrong_width_is_refused_by_the_model():
    with pytest.raises(ValueError, match="3 input channels"):
        create_teacher("cifar10_resnet20", pretrained=False, overrides=SpecOverrides(mean=(0.5, 0.5), std=(0.2, 0.2)))


@pytest.mark.parametrize("name, head", [("cifar10_resnet20", "linear"), ("tv:resnet18", "fc")])
def test_num_classes_builds_the_classifier(name, head):
    model, spec = create_teacher(name, pretrained=False, overrides=SpecOverrides(num_classes=7, image_size=64))
    assert getattr(model, head).out_features == 7 and spec.num_classes == 7 and spec.image_size == 64
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_num_classes_with_published_weights_needs_a_checkpoint(weights_dir):
    with pytest.raises(ValueError, match="published weights have 10 classes, not 100.*--checkpoint"):
        create_teacher("cifar10_resnet20", overrides=SpecOverrides(num_classes=100))


def test_a_classifier_of_another_width_names_the_fix(tmp_path):
    path = tmp_path / "c100.pt"
    torch.save(CifarResNet(20, num_classes=100).state_dict(), path)
    with pytest.raises(ValueError, match="--num-classes"):
        create_teacher("cifar10_resnet20", checkpoint=path)
    model, spec = create_teacher("cifar10_resnet20", checkpoint=path, overrides=SpecOverrides(num_classes=100))
    assert spec.num_classes == 100 and model.linear.out_features == 100


def _formats(sd):
    """(file name, writer) for each checkpoint layout training code commonly writes."""
    module_prefixed = {f"module.{k}": v for k, v in sd.items()}
    return {
        "plain.pt": lambda p: torch.save(sd, p),
        "under_state_dict.pth": lambda p: torch.save({"state_dict": sd, "epoch": 3}, p),
        "under_net.pth": lambda p: torch.save({"net": sd, "acc": 91.2}, p),
        "under_ema.pth": lambda p: torch.save({"ema": sd, "optimizer": {"lr": 0.1}}, p),
        # a ResNet-20 from another codebase: DataParallel keys under 'model' beside its argparse options
        "model_with_options.th": lambda p: torch.save(
            {"model": module_prefixed, "args": argparse.Namespace(lr=0.1, arch="resnet20")}, p),
        "compiled.pt": lambda p: torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, p),
        "lightning.ckpt": lambda p: torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, p),
        "weights.safetensors": lambda p: save_file({k: v.contiguous() for k, v in sd.items()}, p),
        "safetensors_by_header.bin": lambda p: save_file({k: v.contiguous() for k, v in sd.items()}, p),
    }


@pytest.mark.parametrize("name", list(_formats({})))
def test_checkpoint_formats_load_the_same_weights(tmp_path, name):
    reference = CifarResNet(20)
    sd = {k: v.clone() for k, v in reference.state_dict().items()}
    path = tmp_path / name
    _formats(sd)[name](path)
    model, _ = create_teacher("cifar10_resnet20", checkpoint=path)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_file_without_weights_lists_its_keys(tmp_path):
    path = tmp_path / "opts.pt"
    torch.save({"epoch": 3, "best": 0.9}, path)
    with pytest.raises(ValueError, match="holds no state dict.*its keys: epoch, best"):
        read_state_dict(path)


def test_other_normalization_changes_what_the_teacher_sees(weights_dir, cifar_test_dir):
    from dfq.data import build_eval_loader

    _, spec = create_teacher("cifar10_resnet20", overrides=SpecOverrides(mean=CIFAR_MEAN, std=CIFAR_STD))
    assert spec.mean == CIFAR_MEAN and spec.std == CIFAR_STD
    images, _ = next(iter(build_eval_loader(cifar_test_dir, spec, batch_size=8, limit=8, num_workers=0)))
    _, default = create_teacher("cifar10_resnet20")
    images_default, _ = next(iter(build_eval_loader(cifar_test_dir, default, batch_size=8, limit=8, num_workers=0)))
    # the same pixels normalized twice: x * std + mean agrees
    std, mean = torch.tensor(CIFAR_STD).view(3, 1, 1), torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std0, mean0 = torch.tensor(default.std).view(3, 1, 1), torch.tensor(default.mean).view(3, 1, 1)
    assert torch.allclose(images * std + mean, images_default * std0 + mean0, atol=1e-5)
    assert not torch.allclose(images, images_default, atol=1e-2)


def test_a_builder_registered_without_num_classes_still_builds_and_names_its_model():
    import torch as _torch

    from dfq.models import Teacher, register_teacher
    from dfq.models.zoo import CIFAR10_SPEC
    from gznq.pipeline import _check_named

    @register_teacher("test_old_style_builder")
    def _old(*, checkpoint, pretrained, trust_checkpoint):  # the signature before num_classes existed
        return Teacher(CifarResNet(20).eval(), CIFAR10_SPEC)

    model, spec = create_teacher("test_old_style_builder", pretrained=False)
    assert spec == CIFAR10_SPEC
    with pytest.raises(ValueError, match="takes no num_classes"):
        create_teacher("test_old_style_builder", pretrained=False, overrides=SpecOverrides(num_classes=100))
    state = _torch.random.get_rng_state()
    _check_named(Teacher(model, spec), "test_old_style_builder")  # its own model under its name: accepted
    assert _torch.equal(state, _torch.random.get_rng_state())  # and the caller's random state left alone
    with pytest.raises(ValueError, match="is not 'cifar10_resnet20'"):
        _check_named(Teacher(CifarResNet(32).eval(), spec), "cifar10_resnet20")
