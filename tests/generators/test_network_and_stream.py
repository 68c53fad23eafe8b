import pytest
import torch
from torch.utils.data import DataLoader

from generators.network import ConditionalGenerator, GeneratorConfig, denormalize, normalize
from generators.stream import SyntheticStream


def _gen(**kw):
    torch.manual_seed(0)
    return ConditionalGenerator(GeneratorConfig(num_classes=4, image_size=8, base_size=4, width=16, latent_dim=8, **kw))


def test_images_are_in_pixel_space_at_the_teacher_size():
    g = _gen().eval()
    x = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0]))
    assert x.shape == (5, 3, 8, 8) and x.min() >= 0 and x.max() <= 1
    mu, logvar = g.distribution(torch.randn(2, 8), torch.tensor([1, 2]))
    assert logvar.min() >= g.config.logvar_min and logvar.max() <= g.config.logvar_max
    # sample=False gives the mean image; samples scatter around it
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 2])
    assert torch.equal(g(z, y, sample=False), torch.sigmoid(g.distribution(z, y)[0]))
    assert not torch.equal(g(z, y), g(z, y))


def test_large_inputs_are_generated_small_and_upsampled():
    cfg = GeneratorConfig(num_classes=3, image_size=224, width=16, latent_dim=8)
    assert cfg.gen_size == 64
    g = ConditionalGenerator(cfg).eval()
    assert g(torch.randn(2, 8), torch.tensor([0, 2])).shape == (2, 3, 224, 224)
    assert len(g.stages) == 3  # 8 -> 16 -> 32 -> 64


def test_bad_architecture_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        GeneratorConfig(num_classes=10, image_size=32, base_size=6)


def test_denormalize_inverts_normalize_and_clamps_to_pixels():
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.testing.assert_close(denormalize(normalize(x, mean, std), mean, std), x, atol=1e-6, rtol=0)
    assert denormalize(torch.full((1, 3, 1, 1), 10.0), mean, std).eq(1).all()
    assert denormalize(torch.full((1, 3, 1, 1), -10.0), mean, std).eq(0).all()


def test_normalize():
    x = torch.full((1, 3, 2, 2), 0.75)
    assert torch.allclose(normalize(x, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), torch.ones(1, 3, 2, 2))


def _collect(iterable):
    xs, ys = zip(*iterable)
    return torch.cat(xs), torch.cat(ys)


def test_stream_is_reproducible_from_its_seed_and_class_balanced():
    g = _gen()
    a = _collect(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=8, seed=3, num_batches=3))
    b = _collect(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=8, seed=3, num_batches=3))
    c = _collect(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=8, seed=4, num_batches=3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.bincount(a[1], minlength=4).tolist() == [6, 6, 6, 6]
    assert g.training  # the stream restores the generator's mode


def test_stream_splits_across_two_workers_without_duplicates():
    g = _gen()
    single = _collect(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=4, seed=1, num_batches=6))
    stream = SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=4, seed=1, num_batches=6)
    loader = DataLoader(stream, batch_size=None, num_workers=2)
    parallel = _collect(loader)
    assert parallel[0].shape[0] == 24
    assert torch.equal(parallel[0], single[0]) and torch.equal(parallel[1], single[1])
    flat = parallel[0].flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 24  # no image twice


def test_stream_splits_across_ranks(monkeypatch):
    import generators.stream as stream_mod

    g = _gen()
    single = _collect(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=4, seed=2, num_batches=4))
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(stream_mod, "_rank_and_world", lambda rank=rank: (rank, 2))
        parts.append(list(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=4, seed=2, num_batches=4)))
    interleaved = torch.cat([parts[i % 2][i // 2][0] for i in range(4)])
    assert torch.equal(interleaved, single[0])


def test_stream_restricted_to_classes_and_bad_classes():
    g = _gen()
    _, y = _collect(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=6, classes=[1, 3], num_batches=2))
    assert set(y.tolist()) == {1, 3}
    with pytest.raises(ValueError, match="subset of 0..3"):
        SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, classes=[7])
    endless = iter(SyntheticStream(g, (0.5,) * 3, (0.25,) * 3, batch_size=2))
    for _ in range(5):
        next(endless)
