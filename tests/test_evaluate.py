import math

import pytest
import torch
from torch import nn

from dfq.evaluate import evaluate


class FixedLogits(nn.Module):
    """Returns preset logits row by row, whatever the input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.pos = 0

    def forward(self, x):
        out = self.logits[self.pos : self.pos + x.shape[0]]
        self.pos += x.shape[0]
        return out


def test_top1_top5_and_agreement_are_counted_exactly():
    # 4 images, 6 classes; labels 0, 1, 2, 3
    student = torch.tensor(
        [
            [9, 0, 0, 0, 0, 0],  # top1 correct
            [0, 5, 9, 0, 0, 0],  # top1 wrong (2), label 1 in top5
            [9, 8, 7, 6, 5, 0],  # label 2 in top5 only
            [9, 8, 7, 6, 5, 4],  # label 3 in top5, wrong top1
        ],
        dtype=torch.float,
    )
    teacher = torch.tensor(
        [[9, 0, 0, 0, 0, 0], [0, 9, 0, 0, 0, 0], [0, 0, 9, 0, 0, 0], [9, 0, 0, 0, 0, 0]], dtype=torch.float
    )
    batches = [(torch.zeros(2, 1), torch.tensor([0, 1])), (torch.zeros(2, 1), torch.tensor([2, 3]))]
    r = evaluate(FixedLogits(student), batches, teacher=FixedLogits(teacher), progress=False)
    assert r.num_images == 4
    assert r.top1 == 25.0 and r.top5 == 100.0
    assert r.teacher_top1 == 75.0
    assert r.agreement == 50.0  # images 0 and 3 agree (class 0)
    assert set(r.to_dict()) >= {"top1", "top5", "num_images", "seconds", "agreement", "teacher_top1"}
    assert r.broken == 50.0 and r.fixed == 0.0  # images 1 and 2: teacher right, student wrong


def test_the_drop_splits_into_images_broken_and_fixed_and_the_output_kl_is_the_mean_per_image():
    # labels 0, 1, 2, 0: the teacher gets images 0 and 1 right; the student gets 0 and 2 right
    teacher = torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    student = torch.tensor([[2.0, 0, 0], [3.0, 0, 0], [0, 0, 1.0], [0, 0, 1.0]])
    labels = torch.tensor([0, 1, 2, 0])
    r = evaluate(FixedLogits(student), [(torch.zeros(4, 1), labels)], teacher=FixedLogits(teacher), progress=False)
    assert (r.broken, r.fixed) == (25.0, 25.0) and r.drop == r.broken - r.fixed == 0.0
    p, q = teacher.softmax(1), student.softmax(1)
    per_image = (p * (p.log() - q.log())).sum(1)  # 0 for images 0 and 3, whose logits are the same
    assert per_image[0] == 0 and per_image[1] > 0
    assert r.output_kl == pytest.approx(per_image.mean().item(), rel=1e-6)
    assert evaluate(FixedLogits(teacher), [(torch.zeros(4, 1), labels)], teacher=FixedLogits(teacher.clone()),
                    progress=False).output_kl == pytest.approx(0.0, abs=1e-7)
    # the direction: KL(teacher || student), which differs from KL(student || teacher) for these outputs
    one = [(torch.zeros(1, 1), torch.tensor([0]))]
    teacher_logits, student_logits = torch.tensor([[math.log(2.0), 0.0]]), torch.tensor([[0.0, 0.0]])
    r = evaluate(FixedLogits(student_logits), one, teacher=FixedLogits(teacher_logits), progress=False)
    forward = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)  # teacher (2/3, 1/3) against student (1/2, 1/2)
    backward = 1 / 2 * math.log(3 / 4) + 1 / 2 * math.log(3 / 2)
    assert abs(forward - backward) > 1e-3 and r.output_kl == pytest.approx(forward, rel=1e-5)


def test_modes_are_restored_and_empty_input_is_an_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).train()
    evaluate(model, [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))], progress=False)
    assert model.training
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [], progress=False)
    assert model.training
