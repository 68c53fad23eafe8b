import pytest
import torch

from generators.augment import random_resized_crop, with_jittered_copies


def test_jittered_copies_follow_the_originals_and_are_shifts_or_flips_of_them():
    batches = [torch.randn(4, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    out = with_jittered_copies(batches, 2, max_shift=0, seed=3)
    assert [len(x) for x in out] == [4, 2, 4, 2, 4, 2]
    assert out[0] is batches[0] and out[1] is batches[1]
    flipped = 0
    for copy, original in zip(out[2:], batches * 2):
        for a, b in zip(copy, original):
            assert torch.equal(a, b) or torch.equal(a, b.flip(2))
            flipped += int(not torch.equal(a, b))
    assert 0 < flipped < 12  # some flipped, some not
    shifted = with_jittered_copies(batches, 1, max_shift=2, seed=3)[2]
    assert shifted.shape == batches[0].shape and not torch.equal(shifted, batches[0])


def test_jittered_copies_are_reproducible_and_zero_copies_is_the_set_itself():
    batches = [torch.randn(4, 3, 8, 8)]
    a, b = with_jittered_copies(batches, 1, seed=5), with_jittered_copies(batches, 1, seed=5)
    assert torch.equal(a[1], b[1])
    assert with_jittered_copies(batches, 0) == batches
    with pytest.raises(ValueError, match="number of jittered copies must be >= 0"):
        with_jittered_copies(batches, -1)


def _ramp(n=2, size=16):
    """Images whose value is the pixel centre's x coordinate in [-1, 1] (grid_sample's frame)."""
    x = (torch.arange(size) + 0.5) / size * 2 - 1
    return x.expand(n, 3, size, size).clone()


def test_a_full_square_crop_is_the_identity_and_a_quarter_crop_zooms_by_two():
    images = torch.rand(3, 3, 8, 8)
    same = random_resized_crop(images, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(same, images, atol=1e-6)
    # a crop of a quarter of the area at aspect 1 is half as wide: a linear ramp comes back with half its slope
    # (the outermost columns are left out: a crop at the edge samples the flat outer half-pixel there)
    ramp = _ramp()
    out = random_resized_crop(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(1))
    steps = out[..., 2:-1] - out[..., 1:-2]
    assert torch.allclose(steps, torch.full_like(steps, 0.5 * 2 / 16), atol=1e-5)
    assert torch.allclose(out[:, :, 0], out[:, :, 5], atol=1e-6)  # no vertical change in a horizontal ramp


def test_random_resized_crops_are_seeded_and_vary_per_image():
    images = torch.rand(6, 3, 8, 8)
    a = random_resized_crop(images, generator=torch.Generator().manual_seed(2))
    b = random_resized_crop(images, generator=torch.Generator().manual_seed(2))
    c = random_resized_crop(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == images.shape
    assert a.min() >= images.min() - 1e-6 and a.max() <= images.max() + 1e-6  # bilinear: no new extremes
    with pytest.raises(ValueError, match="crop scale must satisfy 0 < low <= high <= 1"):
        random_resized_crop(images, scale=(0.0, 1.0))


def test_jitter_scales_with_the_image_side():
    from generators.augment import scaled_shift

    assert [scaled_shift(2, s) for s in (32, 64, 224, 8)] == [2, 4, 14, 1]
    assert scaled_shift(4, 224) == 28 and scaled_shift(0, 224) == 0
