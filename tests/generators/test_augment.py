import pytest
import torch

from generators.augment import with_jittered_copies


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
