import math

import pytest
import torch

from dfq.losses import kd_loss

STUDENT = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]
TEACHER = [[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]]


def _softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


def _hand_kd(student, teacher, t):
    """T^2 * KL(p_teacher || p_student) at temperature t, averaged over rows, in plain Python."""
    total = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return t * t * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loss_matches_a_hand_computed_t_squared_kl_from_teacher_to_student(temperature):
    got = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), temperature).item()
    assert got == pytest.approx(_hand_kd(STUDENT, TEACHER, temperature), rel=1e-5)
    # the cases tell the likely mistakes apart: the other KL direction, and (at T=4) a missing T^2
    assert got != pytest.approx(_hand_kd(TEACHER, STUDENT, temperature), rel=1e-2)
    if temperature != 1.0:
        assert got != pytest.approx(_hand_kd(STUDENT, TEACHER, temperature) / temperature**2, rel=1e-2)


def test_kd_loss_averages_over_the_batch_not_sums():
    one = kd_loss(torch.tensor(STUDENT[:1]), torch.tensor(TEACHER[:1]), 2.0)
    both = kd_loss(torch.tensor(STUDENT[:1] * 3), torch.tensor(TEACHER[:1] * 3), 2.0)
    assert both.item() == pytest.approx(one.item(), rel=1e-6)
