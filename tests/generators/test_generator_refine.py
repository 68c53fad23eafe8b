import pytest
import torch

from generators.generator_refine import GeneratorRefinedBatches, refine_through_generator
from generators.network import ConditionalGenerator, GeneratorConfig
from generators.refine import RefineConfig
from generators.stream import SyntheticStream
from gznq.sources import Source, open_source
from tests.generators.helpers import TINY_SPEC, batch_bn_kl, tiny_teacher


def _generator(seed=0):
    torch.manual_seed(seed)
    return ConditionalGenerator(GeneratorConfig(num_classes=4, image_size=8, base_size=4, latent_dim=8, width=16,
                                                embed_dim=4)).eval()


def _stream(generator, num_batches=2, seed=3):
    return SyntheticStream(generator, TINY_SPEC.mean, TINY_SPEC.std, batch_size=16, seed=seed,
                           num_batches=num_batches, normalized=False)


def test_refining_through_the_generator_lowers_the_bn_loss_and_leaves_generator_and_teacher_as_they_were():
    teacher, generator = tiny_teacher(), _generator()
    teacher.train()  # the teacher's running statistics are the target: refinement must use and restore eval mode
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    z, labels, noise = _stream(generator).draw(0)
    start = refine_through_generator(teacher, TINY_SPEC, generator, z, labels, RefineConfig(steps=0, space="generator"),
                                     noise=torch.Generator().manual_seed(1))
    refined = refine_through_generator(teacher, TINY_SPEC, generator, z, labels,
                                       RefineConfig(steps=60, lr=0.1, weight_lr=1e-2, space="generator"),
                                       noise=torch.Generator().manual_seed(1), jitter=torch.Generator().manual_seed(2))
    assert refined.shape == (16, 3, 8, 8) and refined.min() >= 0 and refined.max() <= 1
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    teacher.eval()
    assert batch_bn_kl(teacher, refined) < 0.5 * batch_bn_kl(teacher, start)
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())  # the copy trained, not it
    assert not generator.training


def test_the_latents_alone_can_be_refined_and_both_rates_move_the_images(monkeypatch):
    teacher, generator = tiny_teacher(), _generator()
    z, labels, _ = _stream(generator).draw(0)
    groups = []
    adam = torch.optim.Adam

    def spy(params, *args, **kwargs):
        groups.append([len(g["params"]) for g in params])
        return adam(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", spy)

    def run(lr, weight_lr):  # the same pixel noise and jitter draws in every run
        return refine_through_generator(teacher, TINY_SPEC, generator, z, labels,
                                        RefineConfig(steps=5, lr=lr, weight_lr=weight_lr, space="generator"),
                                        noise=torch.Generator().manual_seed(1), jitter=torch.Generator().manual_seed(2))

    still = run(1e-12, 0.0)  # rates too small to move anything
    latents_only, weights_only = run(0.1, 0.0), run(1e-12, 1e-2)
    assert (latents_only - still).abs().max() > 1e-3
    assert (weights_only - still).abs().max() > 1e-3
    n_weights = len(list(generator.parameters()))
    assert groups == [[1], [1], [1, n_weights]]  # weight_lr 0: the weights are not even in the optimizer


def test_generator_refined_batches_repeat_exactly_and_come_out_normalized():
    teacher, generator = tiny_teacher(), _generator()
    config = RefineConfig(steps=3, space="generator")
    batches = GeneratorRefinedBatches(_stream(generator), teacher, TINY_SPEC, config)
    first, second = list(batches), list(batches)
    assert len(first) == len(batches) == 2
    for (a, ya), (b, yb) in zip(first, second):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    raw = list(GeneratorRefinedBatches(_stream(generator), teacher, TINY_SPEC, config, normalized=False))
    mean = torch.tensor(TINY_SPEC.mean).view(1, -1, 1, 1)
    std = torch.tensor(TINY_SPEC.std).view(1, -1, 1, 1)
    assert torch.allclose(first[0][0], (raw[0][0] - mean) / std, atol=1e-6)
    assert not torch.equal(first[0][0], first[1][0])  # each batch its own draws
    with pytest.raises(ValueError, match="a set number of batches"):
        GeneratorRefinedBatches(_stream(generator, num_batches=None), teacher, TINY_SPEC, config)


def test_the_space_is_checked_and_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="unknown refinement space 'latent'"):
        RefineConfig(space="latent")
    for bad in (-1e-3, float("nan")):
        with pytest.raises(ValueError, match="weight_lr must be a finite number >= 0"):
            RefineConfig(weight_lr=bad)
    with pytest.raises(ValueError, match=r"spread_weight=0.1 act on pixels; .*space='pixels'"):
        RefineConfig(space="generator", spread_weight=0.1)
    with pytest.raises(ValueError, match=r"crop_scale=0.5, start_logit_scale=0.4 act on pixels"):
        RefineConfig(space="generator", crop_scale=0.5, start_logit_scale=0.4)
    with pytest.raises(ValueError, match=r"weight_lr=0.01 is the rate of the generator's weights .*space='generator'"):
        RefineConfig(weight_lr=0.01)
    with pytest.raises(ValueError, match="needs a generator source, not noise:"):
        open_source(Source("noise", None), teacher=tiny_teacher(), teacher_name="tiny", spec=TINY_SPEC, num_images=16,
                    batch_size=16, refine=RefineConfig(steps=2, space="generator"))
    teacher, generator = tiny_teacher(), _generator()
    with pytest.raises(ValueError, match="at least 2 images"):
        z, labels, _ = _stream(generator).draw(0)
        refine_through_generator(teacher, TINY_SPEC, generator, z[:1], labels[:1], RefineConfig(space="generator"))


def test_a_generator_source_refined_in_generator_space_gives_the_generator_refined_batches(tmp_path):
    from generators import GeneratorTrainConfig, train_generator

    teacher = tiny_teacher()
    trained = train_generator(teacher, TINY_SPEC, tmp_path / "gen", teacher_name="tiny",
                              gen_config=_generator().config, config=GeneratorTrainConfig(steps=2, batch_size=8),
                              progress=False)
    config = RefineConfig(steps=2, space="generator")
    opened = open_source(Source("generator", tmp_path / "gen"), teacher=teacher, teacher_name="tiny", spec=TINY_SPEC,
                         num_images=20, batch_size=16, seed=3, refine=config)
    assert isinstance(opened, GeneratorRefinedBatches) and len(opened) == 2  # 20 images: two whole batches
    stream = SyntheticStream(trained, TINY_SPEC.mean, TINY_SPEC.std, batch_size=16, seed=3, num_batches=2,
                             normalized=False)
    for (a, ya), (b, yb) in zip(opened, GeneratorRefinedBatches(stream, teacher, TINY_SPEC, config)):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_each_process_refines_only_its_share_of_the_batches(monkeypatch):
    """Under several processes the stream deals batch i to process i mod N; refinement through the generator
    must refine that share, not every batch in every process."""
    teacher, generator = tiny_teacher(), _generator()
    config = RefineConfig(steps=2, space="generator")
    alone = list(GeneratorRefinedBatches(_stream(generator, num_batches=4), teacher, TINY_SPEC, config))
    monkeypatch.setattr("generators.stream._rank_and_world", lambda: (1, 2))
    second = list(GeneratorRefinedBatches(_stream(generator, num_batches=4), teacher, TINY_SPEC, config))
    assert len(second) == 2
    for (a, ya), (b, yb) in zip(second, alone[1::2]):
        assert torch.equal(a, b) and torch.equal(ya, yb)
