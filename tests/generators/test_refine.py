import pytest
import torch

from generators.augment import random_resized_crop
from generators.network import normalize
from generators.quality import capture_penultimate
from generators.refine import (
    RefineConfig,
    RefinedBatches,
    boundary_targets,
    optimize_logits,
    refine_images,
    within_class_similarity,
)
from gznq.sources import Source, open_source
from tests.generators.helpers import TINY_SPEC, batch_bn_kl, tiny_teacher


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.sigmoid(torch.randn(n, 3, 8, 8, generator=g)), torch.arange(n) % 4


def test_refinement_lowers_the_batch_bn_loss_and_restores_the_teacher():
    teacher = tiny_teacher()
    teacher.train()  # refinement must use running statistics and hand the mode back
    images, labels = _batch()
    refined = refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=60, lr=0.1, ce_weight=0.0))
    assert refined.shape == images.shape and refined.min() >= 0 and refined.max() <= 1
    teacher.eval()
    before, after = batch_bn_kl(teacher, images), batch_bn_kl(teacher, refined)
    assert after < 0.5 * before, (before, after)
    teacher.train()
    refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=1))
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert not any(m._forward_pre_hooks for m in teacher.modules())


def test_zero_steps_is_the_identity_and_bad_inputs_are_refused():
    teacher = tiny_teacher()
    images, labels = _batch()
    assert refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=0)) is images
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\], not normalized"):
        refine_images(teacher, TINY_SPEC, normalize(images, TINY_SPEC.mean, TINY_SPEC.std), labels)
    with pytest.raises(ValueError, match="at least 2 images"):
        refine_images(teacher, TINY_SPEC, images[:1], labels[:1])
    with pytest.raises(ValueError, match="steps must be >= 0"):
        RefineConfig(steps=-1)
    with pytest.raises(ValueError, match="unknown BN loss 'l1'"):
        RefineConfig(bn_loss="l1")
    with pytest.raises(ValueError, match="loss weights must be finite and >= 0, got bn_weight=1.0, ce_weight=-1"):
        RefineConfig(ce_weight=-1)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"spread_weight={bad}"):
            RefineConfig(spread_weight=bad)
    with pytest.raises(ValueError, match="boundary_share acts through the class loss"):
        RefineConfig(boundary_share=0.5, ce_weight=0.0)


def test_refined_batches_are_normalized_and_repeat_exactly():
    teacher = tiny_teacher()
    batches = [_batch(seed) for seed in range(2)]
    config = RefineConfig(steps=3, lr=0.1)
    stream = RefinedBatches(batches, teacher, TINY_SPEC, config, seed=4)
    first, second = list(stream), list(stream)
    assert len(stream) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    direct = refine_images(teacher, TINY_SPEC, *batches[0], config, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(first[0][0], normalize(direct, TINY_SPEC.mean, TINY_SPEC.std))
    assert torch.equal(first[1][1], batches[1][1])


def test_refinement_of_a_real_source_is_refused(tmp_path):
    with pytest.raises(ValueError, match="refinement applies to generator and noise sources, not real:"):
        open_source(Source("real", tmp_path), teacher=tiny_teacher(), teacher_name="tiny", spec=TINY_SPEC,
                    num_images=4, refine=RefineConfig(steps=5))


def test_boundary_targets_blend_a_share_of_rows_with_another_class():
    labels = torch.arange(20) % 5
    targets = boundary_targets(labels, 5, share=0.5, low=0.6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(targets.sum(1), torch.ones(20))
    own = targets.gather(1, labels[:, None]).squeeze(1)
    soft = own < 1
    assert int(soft.sum()) == 10 and bool((own[soft] >= 0.6).all())
    # each soft row puts the rest on exactly one other class; the other rows stay one-hot
    assert ((targets[soft] > 0).sum(1) == 2).all()
    assert torch.equal(targets[~soft], torch.nn.functional.one_hot(labels[~soft], 5).float())
    assert torch.equal(boundary_targets(labels, 5, share=0.0, low=0.5), torch.nn.functional.one_hot(labels, 5).float())
    with pytest.raises(ValueError, match="boundary_share and boundary_min must be in"):
        RefineConfig(boundary_share=1.5)


def test_boundary_refinement_moves_probability_to_the_other_class():
    teacher = tiny_teacher()
    with torch.no_grad():
        teacher[-1].weight.mul_(30)  # a random tiny net is otherwise unsure of everything
    images, labels = _batch(n=32)
    # refine_images draws the targets first from its generator, so the same seed shows which class each row got
    targets = boundary_targets(labels, 4, 1.0, 0.5, generator=torch.Generator().manual_seed(1))
    other = (targets - torch.nn.functional.one_hot(labels, 4)).argmax(1)

    def probabilities(config):
        refined = refine_images(teacher, TINY_SPEC, images, labels, config, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            p = teacher(normalize(refined, TINY_SPEC.mean, TINY_SPEC.std)).softmax(1)
        return p.gather(1, labels[:, None]).mean(), p.gather(1, other[:, None]).mean()

    own_sharp, other_sharp = probabilities(RefineConfig(steps=60, lr=0.2, bn_weight=0.0, ce_weight=1.0))
    own_soft, other_soft = probabilities(RefineConfig(steps=60, lr=0.2, bn_weight=0.0, ce_weight=1.0,
                                                          boundary_share=1.0))
    assert own_soft < own_sharp - 0.03 and other_soft > other_sharp + 0.03, (own_sharp, own_soft, other_sharp, other_soft)


def test_a_start_crop_changes_what_refinement_starts_from_and_only_then():
    teacher = tiny_teacher()
    images, labels = _batch()

    def refined(**fields):
        return refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=2, **fields),
                             generator=torch.Generator().manual_seed(0))

    plain, cropped = refined(crop_scale=1.0), refined(crop_scale=0.25)
    assert not torch.allclose(plain, cropped, atol=1e-3)
    assert torch.equal(refined(), cropped)  # the default starts from crops of a quarter to all of the area
    # crop_scale 1 starts from the samples as drawn: the same as refining without the option's random draws
    by_hand, _ = optimize_logits(teacher, TINY_SPEC, torch.logit(images.clamp(1e-4, 1 - 1e-4)), labels,
                                 RefineConfig(steps=2, crop_scale=1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, by_hand)
    # one step at a small rate stays near the start: the cropped start, not the sample as drawn
    start = random_resized_crop(images, scale=(0.25, 1.0), generator=torch.Generator().manual_seed(0))
    near = refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=1, lr=1e-4, crop_scale=0.25),
                         generator=torch.Generator().manual_seed(0))
    assert (near - start).abs().max() < 1e-3 < (near - images).abs().max()
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"crop_scale .* in \(0, 1\]"):
            RefineConfig(crop_scale=bad)


def test_start_logit_scale_starts_refinement_from_greyer_images():
    teacher = tiny_teacher()
    g = torch.Generator().manual_seed(3)
    images = torch.sigmoid(4 * torch.randn(16, 3, 8, 8, generator=g))  # saturated, like a generator's samples
    labels = torch.arange(16) % 4

    def refined(**fields):
        config = RefineConfig(steps=1, lr=1e-4, crop_scale=1.0, **fields)
        return refine_images(teacher, TINY_SPEC, images, labels, config, generator=torch.Generator().manual_seed(0))

    # one step at a small rate stays at the start: sigmoid(0.25 * logit(x)), not x
    start = torch.sigmoid(0.25 * torch.logit(images.clamp(1e-4, 1 - 1e-4)))
    assert (refined(start_logit_scale=0.25) - start).abs().max() < 1e-3 < (start - images).abs().max()
    assert (refined() - images).abs().max() < 1e-3  # the default, 1.0, starts from the images as given
    assert (start - 0.5).abs().mean() < 0.6 * (images - 0.5).abs().mean()  # greyer
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="start_logit_scale must be a positive number"):
            RefineConfig(start_logit_scale=bad)


def test_within_class_similarity_averages_the_cosine_of_same_class_pairs_per_class():
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0],  # class 0: all pairs at cosine 1
                             [1.0, 0.0], [0.0, 5.0],  # class 1: one pair at cosine 0
                             [1.0, 1.0]])  # class 2: alone, left out
    classes = torch.tensor([0, 0, 0, 1, 1, 2])
    assert within_class_similarity(features, classes).item() == pytest.approx(0.5)  # (1 + 0) / 2, per class
    mixed = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert within_class_similarity(mixed, torch.tensor([0, 0, 0])).item() == pytest.approx(2 ** 0.5 / 3)
    lone = torch.randn(3, 4, requires_grad=True)
    value = within_class_similarity(lone, torch.tensor([0, 1, 2]))  # no class has two rows
    value.backward()
    assert value.item() == 0 and torch.equal(lone.grad, torch.zeros(3, 4))


def test_the_spread_term_pushes_images_of_one_class_apart_in_the_teachers_features():
    teacher = tiny_teacher()
    images, labels = _batch(n=24)

    def similarity(x):
        with torch.no_grad(), capture_penultimate(teacher) as features:
            predicted = teacher(normalize(x, TINY_SPEC.mean, TINY_SPEC.std)).argmax(1)
        return within_class_similarity(features[-1], predicted).item()

    def refined(**weights):  # no jitter, so the features optimized are the ones measured
        config = RefineConfig(steps=20, lr=0.1, crop_scale=1.0, max_shift=0, flip=False, **weights)
        return refine_images(teacher, TINY_SPEC, images, labels, config, generator=torch.Generator().manual_seed(0))

    # the tiny teacher's pooled features of noise are nearly parallel (0.998); the term alone spreads them,
    # the BN loss alone hardly does
    start, spread, bn_only = similarity(images), similarity(refined(bn_weight=0.0, spread_weight=1.0)), \
        similarity(refined(bn_weight=1.0))
    assert spread < start - 0.03 and spread < bn_only - 0.03, (start, spread, bn_only)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in teacher.modules())  # hooks removed


def test_within_class_similarity_refuses_classes_that_are_not_one_index_per_row():
    with pytest.raises(ValueError, match="one class index per row"):
        within_class_similarity(torch.randn(4, 3), torch.tensor([0.0, 1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="one class index per row"):
        within_class_similarity(torch.randn(4, 3), torch.tensor([0, 1, 0]))


def test_bfloat16_refinement_lowers_the_bn_loss_as_float32_does_and_its_losses_read_float32(monkeypatch):
    import generators.refine as refine

    teacher = tiny_teacher()
    images, labels = _batch()
    refined = {p: refine_images(teacher, TINY_SPEC, images, labels, RefineConfig(steps=60, lr=0.1, precision=p),
                                generator=torch.Generator().manual_seed(3))
               for p in ("float32", "bfloat16")}
    assert torch.isfinite(refined["bfloat16"]).all()
    before = batch_bn_kl(teacher, images)
    after = {p: batch_bn_kl(teacher, x) for p, x in refined.items()}
    assert after["bfloat16"] < 0.5 * before, (before, after)
    assert after["bfloat16"] == pytest.approx(after["float32"], rel=0.1), after  # bf16 rounding, not another loss
    assert not torch.equal(refined["bfloat16"], refined["float32"])  # the option did change the computation
    # the class and spread terms get the teacher's outputs in float32, not in autocast's bfloat16
    seen = []
    cross_entropy, similarity = refine.F.cross_entropy, refine.within_class_similarity
    monkeypatch.setattr(refine.F, "cross_entropy", lambda out, y: seen.append(out.dtype) or cross_entropy(out, y))
    monkeypatch.setattr(refine, "within_class_similarity", lambda f, c: seen.append(f.dtype) or similarity(f, c))
    refine_images(teacher, TINY_SPEC, images, labels,
                  RefineConfig(steps=2, ce_weight=1.0, spread_weight=0.05, precision="bfloat16"))
    assert seen == [torch.float32] * 4


def test_a_precision_the_device_cannot_run_is_refused():
    from generators.refine import check_precision

    with pytest.raises(ValueError, match="unknown refinement precision 'float16'; choose one of float32, bfloat16"):
        RefineConfig(precision="float16")
    with pytest.raises(ValueError, match="bfloat16 refinement runs on a CPU or a CUDA GPU, not on meta"):
        check_precision(RefineConfig(precision="bfloat16"), torch.device("meta"))
    check_precision(RefineConfig(precision="float32"), torch.device("meta"))  # float32 runs anywhere
    check_precision(RefineConfig(precision="bfloat16"), torch.device("cpu"))
