
import pytest
import torch
from torch import nn

from dfq.models import create_teacher, list_teachers
from dfq.models import weights as weights_mod
from dfq.models.cifar_resnet import CifarResNet
from dfq.models.weights import read_state_dict


def test_registry_lists_the_cifar_zoo():
    assert {f"cifar10_resnet{d}" for d in (20, 32, 44, 56, 110)} <= set(list_teachers())


@pytest.mark.parametrize("name", ["cifar10_resnet20", "cifar10_resnet32"])
def test_published_checkpoints_load_with_no_missing_or_unexpected_keys(name, weights_dir):
    depth = int(name.removeprefix("cifar10_resnet"))
    path = next(weights_dir.glob(f"resnet{depth}-*.th"))
    state = read_state_dict(path)
    model_keys = set(CifarResNet(depth).state_dict())
    assert set(state) - model_keys == set()
    assert {k for k in model_keys - set(state) if not k.endswith("num_batches_tracked")} == set()
    model, spec = create_teacher(name, checkpoint=path)
    assert not model.training
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert spec.num_classes == 10 and spec.image_size == 32


def test_weights_found_through_env_var_then_hub_cache(weights_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "_dev_assets_dir", lambda: tmp_path / "nowhere")
    monkeypatch.setenv("GZNQ_WEIGHTS", str(weights_dir))
    model, _ = create_teacher("cifar10_resnet20")
    expected = read_state_dict(weights_dir / "resnet20-12fca82f.th")["linear.weight"]
    assert torch.equal(model.linear.weight, expected)

    monkeypatch.delenv("GZNQ_WEIGHTS")
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / "resnet20-12fca82f.th").symlink_to(weights_dir / "resnet20-12fca82f.th")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    model, _ = create_teacher("cifar10_resnet20")
    assert torch.equal(model.linear.weight, expected)


def test_missing_weights_error_names_file_and_places(monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "_dev_assets_dir", lambda: tmp_path / "dev")
    monkeypatch.setenv("GZNQ_WEIGHTS", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        create_teacher("cifar10_resnet56")
    msg = str(info.value)
    assert "resnet56-4bfd9763.th" in msg
    assert str(tmp_path / "env") in msg and str(tmp_path / "dev") in msg and "torch hub cache" in msg
    assert "--checkpoint" in msg


def test_failed_download_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(weights_mod, "_dev_assets_dir", lambda: tmp_path / "dev")
    monkeypatch.delenv("GZNQ_OFFLINE")

    def no_network(weight, dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(weights_mod, "_download", no_network)
    with pytest.raises(FileNotFoundError, match="download from https://.*resnet44-014dd654.th failed.*unreachable"):
        create_teacher("cifar10_resnet44")


def test_explicit_checkpoint_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_teacher("cifar10_resnet20", checkpoint=tmp_path / "nope.th")


def test_checkpoint_with_a_wrong_key_fails_loudly(weights_dir, tmp_path):
    state = read_state_dict(weights_dir / "resnet20-12fca82f.th")
    state["fc.weight"] = state.pop("linear.weight")
    bad = tmp_path / "bad.th"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(ValueError, match=r"missing keys: \['linear.weight'\].*unexpected keys: \['fc.weight'\]"):
        create_teacher("cifar10_resnet20", checkpoint=bad)


def test_checkpoint_of_another_depth_fails(weights_dir):
    with pytest.raises(ValueError, match="does not fit CifarResNet"):
        create_teacher("cifar10_resnet20", checkpoint=weights_dir / "resnet32-d509ac18.th")


def test_file_that_is_not_a_checkpoint(tmp_path):
    junk = tmp_path / "junk.th"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        create_teacher("cifar10_resnet20", checkpoint=junk)


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model 'cifar10_resnet21'.*Did you mean .*cifar10_resnet20"):
        create_teacher("cifar10_resnet21")
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'"):
        create_teacher("tv:resnet19", pretrained=False)
    with pytest.raises(ValueError, match="unknown timm model"):
        create_teacher("timm:not_a_model_xyz", pretrained=False)


def test_model_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="no BatchNorm layers.*running mean and variance"):
        create_teacher("tv:vgg11", pretrained=False)


def test_torchvision_and_timm_teachers_build_with_their_specs(tmp_path):
    model, spec = create_teacher("tv:resnet18", pretrained=False)
    assert (spec.image_size, spec.resize_size, spec.num_classes, spec.interpolation) == (224, 256, 1000, "bilinear")
    assert not model.training
    ckpt = tmp_path / "r18.pth"
    torch.save(model.state_dict(), ckpt)
    reloaded, _ = create_teacher("tv:resnet18", checkpoint=ckpt)
    assert torch.equal(reloaded.fc.weight, model.fc.weight)

    model, spec = create_teacher("timm:resnet18", pretrained=False)
    assert spec.image_size == 224 and spec.num_classes == 1000 and spec.resize_size == int(224 / 0.95)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_unavailable_pretrained_weights_point_to_checkpoint(monkeypatch):
    import torchvision.models

    def offline(*args, **kwargs):
        if kwargs.get("weights") is not None:
            raise OSError("no internet")
        return original(*args, **kwargs)

    original = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(RuntimeError, match="could not get pretrained weights for 'tv:resnet18'.*--checkpoint"):
        create_teacher("tv:resnet18")
