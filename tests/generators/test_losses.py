import pytest
import torch

from generators.losses import mode_seeking_loss, total_variation


def test_total_variation_of_constant_images_is_zero():
    assert total_variation(torch.full((2, 3, 5, 4), 0.7)).item() == 0.0


def test_total_variation_of_ramps_is_their_step():
    w = torch.arange(6.0) * 0.1
    h = torch.arange(5.0) * 0.2
    horizontal = w.expand(2, 3, 5, 6)
    vertical = h.view(5, 1).expand(2, 3, 5, 6)
    assert total_variation(horizontal).item() == pytest.approx(0.1, rel=1e-6)
    assert total_variation(vertical).item() == pytest.approx(0.2, rel=1e-6)
    assert total_variation(horizontal + vertical).item() == pytest.approx(0.3, rel=1e-6)


def test_total_variation_averages_over_neighbour_pairs_and_the_batch():
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0  # 2 of the 12 vertical and 2 of the 12 horizontal differences are 1; image 1 is flat
    assert total_variation(x).item() == pytest.approx((2 / 24) + (2 / 24), rel=1e-6)


def test_mode_seeking_loss_is_the_mean_inverse_distance_ratio():
    x1, x2 = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    z1, z2 = torch.zeros(2, 4), torch.zeros(2, 4)
    x2[0] = 0.5  # pair 0: mean |dx| 0.5
    x2[1, :, 0, :] = 0.1  # pair 1: half of the pixels differ by 0.1, mean |dx| 0.05
    z2[0] = 0.25  # pair 0: mean |dz| 0.25, ratio 2
    z2[1] = torch.tensor([-1.0, 1.0, 1.0, -1.0])  # pair 1: mean |dz| 1, ratio 0.05
    for eps in (1e-5, 0.5):
        expected = (1 / (2 + eps) + 1 / (0.05 + eps)) / 2
        assert mode_seeking_loss(x1, x2, z1, z2, eps).item() == pytest.approx(expected, rel=1e-5)


def test_mode_seeking_loss_of_collapsed_pairs_is_one_over_eps():
    x = torch.rand(3, 3, 4, 4)
    z1, z2 = torch.zeros(3, 8), torch.ones(3, 8)
    assert mode_seeking_loss(x, x.clone(), z1, z2, 1e-3).item() == pytest.approx(1e3, rel=1e-6)


def test_latent_nll_is_the_gaussian_entropy_for_a_blind_posterior_and_lower_for_a_knowing_one():
    import math

    from generators.posterior import LatentPosterior, latent_nll

    z = torch.randn(4096, 16, generator=torch.Generator().manual_seed(0))
    blind = latent_nll(torch.zeros_like(z), torch.zeros_like(z), z).item()
    assert blind == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.02)
    knowing = latent_nll(z + 0.1 * torch.randn_like(z), torch.full_like(z, math.log(0.01)), z).item()
    assert knowing < blind - 1.5
    posterior = LatentPosterior(latent_dim=16, channels=3, size=4)
    mean, logvar = posterior(torch.rand(5, 3, 32, 32))
    assert mean.shape == logvar.shape == (5, 16) and logvar.min() >= -6 and logvar.max() <= 2
    # it reads the pooled image only: pixel noise that averages out within a 8x8 cell cannot reach it
    flat = torch.full((1, 3, 32, 32), 0.5)
    checker = flat + 0.1 * (torch.arange(32)[:, None] + torch.arange(32)[None, :]).remainder(2).mul(2).sub(1)
    assert torch.allclose(posterior(flat)[0], posterior(checker)[0], atol=1e-6)
