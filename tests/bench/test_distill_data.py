import torch
from torch import nn

from bench.distill_data import adversarial_batches, cutout, lowpass, strong_batches
from dfq.distill import kd_loss


def test_lowpass_keeps_a_constant_and_damps_the_highest_frequency():
    flat = torch.full((1, 1, 8, 8), 0.7)
    assert torch.allclose(lowpass(flat, 0.5), flat, atol=1e-6)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1  # the Nyquist frequency in both axes
    out = lowpass(checker[None, None], 0.5)
    # |f|^2 = 2 (in units of Nyquist) -> gain exp(-2 / (2 * 0.25)) = exp(-4)
    assert torch.allclose(out, checker * torch.exp(torch.tensor(-4.0)), atol=1e-6)


def test_cutout_zeroes_one_square_of_side_eleven_per_image_inside_the_frame():
    x = torch.ones(64, 1, 32, 32)
    zeroed = (cutout(x, 12, torch.Generator().manual_seed(0)) == 0).sum(dim=(1, 2, 3))
    assert zeroed.max() == 11 * 11 and zeroed.min() >= 6 * 6  # clipped at a corner: at least 6 by 6


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def test_strong_batches_are_seeded_with_the_teachers_labels():
    teacher, images = _tiny(), [torch.randn(8, 3, 16, 16)]
    a, b = next(strong_batches(images, teacher, 5, 1)), next(strong_batches(images, teacher, 5, 1))
    assert torch.equal(a[0], b[0]) and a[0].shape == (5, 3, 16, 16) and a[1].shape == (5,)
    assert set(a[1].tolist()) <= set(teacher(images[0]).argmax(1).tolist())


def test_adversarial_batches_raise_the_disagreement_of_the_moved_share():
    teacher, student, images = _tiny(), _tiny(), [torch.randn(16, 3, 16, 16)]
    with torch.no_grad():
        student[-1].weight.add_(0.3 * torch.randn_like(student[-1].weight))
    moved, _ = next(adversarial_batches(images, teacher, student, 16, 2, steps=3, eps=0.5, share=0.5))
    plain, _ = next(adversarial_batches(images, teacher, student, 16, 2, steps=0, share=0.5))
    with torch.no_grad():
        def disagreement(x):
            return kd_loss(student(x), teacher(x), 1.0)
        assert disagreement(moved[:8]) > disagreement(plain[:8])
        assert torch.equal(moved[8:], plain[8:])  # the rest of the batch is left as drawn
    assert all(p.requires_grad for p in student.parameters())
