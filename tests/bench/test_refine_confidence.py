import math

import torch
from torch import nn

from bench.refine_confidence import teacher_view


def test_teacher_view_measures_confidence_the_share_below_0_9_and_the_feature_norm():
    teacher = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        teacher[2].weight.copy_(torch.eye(2))
    # logits (0, 0): top probability 0.5; (4, 0): 1 / (1 + e^-4) = 0.982
    batch = torch.tensor([[0.0, 0.0], [4.0, 0.0]]).view(2, 2, 1, 1)
    view = teacher_view(teacher, teacher[0], [batch, batch])
    expected = (0.5 + 1 / (1 + math.exp(-4))) / 2
    assert math.isclose(view["confidence"], expected, rel_tol=1e-5)
    assert view["below_0.9"] == 0.5 and view["images"] == 4
    assert math.isclose(view["feature_norm"], 2.0, rel_tol=1e-6)  # norms 0 and 4
    assert not teacher[0]._forward_hooks  # the hook is removed
