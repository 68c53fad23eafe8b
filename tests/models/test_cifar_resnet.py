import pytest
import torch

from dfq.models import CifarResNet

# Parameter counts of the published akamaster models (its README: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M).
EXPECTED_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", sorted(EXPECTED_PARAMS))
def test_parameter_count(depth):
    model = CifarResNet(depth)
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[depth]


def test_forward_shapes_and_option_a_shortcut_has_no_parameters():
    model = CifarResNet(20).eval()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    shortcut = model.layer2[0].shortcut
    assert sum(p.numel() for p in shortcut.parameters()) == 0
    x = torch.randn(1, 16, 32, 32)
    y = shortcut(x)  # subsample by 2, pad 8 zero channels on each side
    assert y.shape == (1, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("depth", [19, 2, 21])
def test_bad_depth_is_refused(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth)
