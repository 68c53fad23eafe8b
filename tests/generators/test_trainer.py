import csv
import dataclasses

import pytest
import torch

from generators.bn_stats import BNStatsRecorder, bn_kl_loss, input_stats_kl
from generators.checkpoint import load_generator, teacher_fingerprint
from generators.network import ConditionalGenerator, GeneratorConfig, normalize
from generators.trainer import GeneratorObjective, GeneratorTrainConfig, balanced_labels, lr_factor, train_generator
from tests.generators.helpers import TINY_SPEC, tiny_teacher

GEN = GeneratorConfig(num_classes=4, image_size=8, base_size=4, width=16, latent_dim=8, embed_dim=8)


def _config(**kw):
    base = dict(steps=30, batch_size=16, lr=5e-3, warmup_steps=2, log_every=1, save_every=10, grid_every=1000)
    return GeneratorTrainConfig(**{**base, **kw})


def _bn_loss(teacher, generator, seed=0):
    g = torch.Generator().manual_seed(seed)
    z, y = torch.randn(64, 8, generator=g), balanced_labels(64, 4, g)
    generator.eval()
    with torch.no_grad(), BNStatsRecorder(teacher) as rec:
        teacher(normalize(generator(z, y, generator=g), TINY_SPEC.mean, TINY_SPEC.std))
    return bn_kl_loss(rec.stats).item()


def test_training_reduces_the_bn_loss(tmp_path):
    teacher = tiny_teacher()
    torch.manual_seed(0)
    before = _bn_loss(teacher, ConditionalGenerator(GEN))
    torch.manual_seed(0)
    generator = train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", gen_config=GEN,
                                config=_config(ce_weight=0.0, diversity_weight=0.0), progress=False)
    after = _bn_loss(teacher, generator)
    assert after < 0.5 * before
    rows = list(csv.DictReader(open(tmp_path / "g" / "losses.csv")))
    assert len(rows) == 30 and float(rows[-1]["bn"]) < float(rows[0]["bn"])
    assert (tmp_path / "g" / "samples.png").is_file()


def test_checkpoint_reloads_to_identical_samples_and_refuses_other_teachers(tmp_path):
    teacher = tiny_teacher()
    generator = train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", gen_config=GEN,
                                config=_config(steps=3), progress=False)
    loaded, meta = load_generator(tmp_path / "g", teacher_name="tiny", teacher=teacher)
    z, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(generator.eval()(z, y, generator=g1), loaded(z, y, generator=g2))
    assert meta["record"]["step"] == 3
    with pytest.raises(ValueError, match="trained for teacher 'tiny', not 'cifar10_resnet20'"):
        load_generator(tmp_path / "g", teacher_name="cifar10_resnet20")
    with pytest.raises(ValueError, match="different weights"):
        load_generator(tmp_path / "g", teacher_name="tiny", teacher=tiny_teacher(seed=1))
    with pytest.raises(FileNotFoundError, match="not a generator checkpoint"):
        load_generator(tmp_path / "nothing")


@pytest.mark.parametrize("terms", [{}, {"info_weight": 0.5, "class_bn_weight": 1.0, "diversity_space": "pooled"}])
def test_interrupted_run_saves_and_resumes_with_identical_losses(tmp_path, monkeypatch, terms):
    teacher = tiny_teacher()
    torch.manual_seed(0)
    train_generator(teacher, TINY_SPEC, tmp_path / "full", teacher_name="tiny", gen_config=GEN,
                    config=_config(steps=20, save_every=100, **terms), progress=False)

    calls = {"n": 0}
    original = GeneratorObjective.forward

    def ctrl_c_at_step_8(self, generator, rng):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, generator, rng)

    monkeypatch.setattr(GeneratorObjective, "forward", ctrl_c_at_step_8)
    torch.manual_seed(123)  # the run's own seed, not the global one, decides every initial weight
    with pytest.raises(KeyboardInterrupt):
        train_generator(teacher, TINY_SPEC, tmp_path / "cut", teacher_name="tiny", gen_config=GEN,
                        config=_config(steps=20, save_every=100, **terms), progress=False)
    monkeypatch.setattr(GeneratorObjective, "forward", original)
    _, meta = load_generator(tmp_path / "cut", teacher_name="tiny")
    assert meta["record"]["step"] == 7  # Ctrl-C saved the last completed step
    train_generator(teacher, TINY_SPEC, tmp_path / "cut", teacher_name="tiny", resume=True, progress=False)
    full = list(csv.DictReader(open(tmp_path / "full" / "losses.csv")))
    resumed = list(csv.DictReader(open(tmp_path / "cut" / "losses.csv")))
    assert [r["step"] for r in resumed] == [str(i) for i in range(1, 21)]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    if terms:
        assert all(float(r["info"]) > 0 and float(r["class_bn"]) > 0 for r in resumed)


def test_new_run_refuses_to_overwrite_and_resume_needs_a_run(tmp_path):
    teacher = tiny_teacher()
    train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", gen_config=GEN,
                    config=_config(steps=1), progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", gen_config=GEN,
                        config=_config(steps=1), progress=False)
    with pytest.raises(FileNotFoundError):
        train_generator(teacher, TINY_SPEC, tmp_path / "none", teacher_name="tiny", resume=True, progress=False)


def test_teacher_without_bn_is_refused(tmp_path):
    no_bn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    no_bn(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="no BatchNorm layers"):
        train_generator(no_bn, TINY_SPEC, tmp_path / "g", teacher_name="x", gen_config=GEN, config=_config(steps=1),
                        progress=False)


def test_objective_parts_and_schedule():
    teacher = tiny_teacher()
    objective = GeneratorObjective(teacher, TINY_SPEC, _config(tv_weight=0.1))
    loss, parts = objective(ConditionalGenerator(GEN), torch.Generator().manual_seed(0))
    c = objective.config
    expected = (c.ce_weight * parts["ce"] + c.bn_weight * parts["bn"] + c.class_bn_weight * parts["class_bn"]
                + c.diversity_weight * parts["div"] + 0.1 * parts["tv"])
    assert parts["class_bn"] > 0 and parts["info"] == 0  # the defaults: per-class BN on, posterior off
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    cfg = GeneratorTrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) == pytest.approx(0.1, abs=1e-3)
    with pytest.raises(ValueError, match="unknown BN loss"):
        GeneratorTrainConfig(bn_loss="wasserstein")
    assert teacher_fingerprint(teacher) == teacher_fingerprint(tiny_teacher())
    assert dataclasses.asdict(c)["tv_weight"] == 0.1


def test_objective_with_latent_and_class_terms_adds_them_and_trains_the_posterior():
    teacher = tiny_teacher()
    config = _config(info_weight=0.5, class_bn_weight=2.0, class_bn_layers=2, diversity_space="pooled",
                     ce_weight=0.7)
    objective = GeneratorObjective(teacher, TINY_SPEC, config, latent_dim=GEN.latent_dim)
    generator = ConditionalGenerator(GEN)
    loss, parts = objective(generator, torch.Generator().manual_seed(0))
    expected = (0.7 * parts["ce"] + parts["bn"] + 2.0 * parts["class_bn"] + 0.5 * parts["info"]
                + config.diversity_weight * parts["div"])
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["class_bn"] > 0 and parts["info"] > 0
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.posterior.parameters())
    with pytest.raises(ValueError, match="latent_dim"):
        GeneratorObjective(teacher, TINY_SPEC, config)
    with pytest.raises(ValueError, match=">= 0"):
        _config(info_weight=-1.0)
    with pytest.raises(ValueError, match="diversity_space"):
        _config(diversity_space="latent")


def test_mode_seeking_in_several_spaces_is_the_sum_of_the_single_space_terms():
    teacher, generator = tiny_teacher(), ConditionalGenerator(GEN)

    def div(space):
        _, parts = GeneratorObjective(teacher, TINY_SPEC, _config(diversity_space=space))(
            generator, torch.Generator().manual_seed(0))
        return parts["div"]

    pooled, feature = div("pooled"), div("feature")
    assert pooled > 0 and feature > 0 and pooled != pytest.approx(feature)
    assert div("pooled+feature") == pytest.approx(pooled + feature, rel=1e-5)
    for bad in ("pooled+pooled", "pooled+latent", "pooled,feature", "", "feature+pooled"):
        with pytest.raises(ValueError, match="joined by '\\+'"):
            _config(diversity_space=bad)


def test_input_term_is_added_with_its_weight_and_pulls_the_images_to_the_normalization(tmp_path):
    """The input-statistics term: off by default (0 in the parts), added with its weight when on, and training
    with it brings the normalized images' per-channel statistics toward mean 0, variance 1."""
    teacher = tiny_teacher()
    draw = torch.Generator().manual_seed(0)
    _, parts = GeneratorObjective(teacher, TINY_SPEC, _config())(ConditionalGenerator(GEN), draw)
    assert parts["input"] == 0.0
    objective = GeneratorObjective(teacher, TINY_SPEC, _config(input_weight=3.0))
    loss, parts = objective(ConditionalGenerator(GEN), torch.Generator().manual_seed(0))
    c = objective.config
    expected = (c.ce_weight * parts["ce"] + c.bn_weight * parts["bn"] + c.class_bn_weight * parts["class_bn"]
                + 3.0 * parts["input"] + c.diversity_weight * parts["div"])
    assert parts["input"] > 0 and loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=">= 0 and finite"):
        _config(input_weight=-1.0)
    with pytest.raises(ValueError, match=">= 0 and finite"):
        _config(input_weight=float("nan"))

    # the other terms as this test was written with (the defaults before 2026-12-03): under today's, mode
    # seeking on the tiny teacher's features outweighs the input term in 40 steps (0.21 with it, 0.17 without)
    def input_kl(**kw):
        config = _config(steps=40, batch_size=32, ce_weight=1.0, diversity_space="pooled", **kw)
        generator = train_generator(teacher, TINY_SPEC, tmp_path / str(kw), teacher_name="tiny", gen_config=GEN,
                                    config=config, progress=False)
        z, y = torch.randn(256, 8, generator=torch.Generator().manual_seed(1)), torch.arange(256) % 4
        with torch.no_grad():
            x = generator.eval()(z, y, generator=torch.Generator().manual_seed(2))
            x = normalize(x, TINY_SPEC.mean, TINY_SPEC.std)
        return input_stats_kl(x).item()

    assert input_kl(input_weight=5.0) < 0.5 * input_kl()


def test_pooled_mode_seeking_makes_different_latents_give_visibly_different_images(tmp_path):
    """Mode seeking on images pooled to 2x2 (the tiny teacher's 8x8 images): the latent must move the coarse
    layout, which per-pixel noise cannot fake. Without it this generator's images of a class collapse."""
    def coarse_spread(**kw):
        generator = train_generator(tiny_teacher(), TINY_SPEC, tmp_path / str(len(kw)), teacher_name="tiny",
                                    gen_config=GEN, config=_config(steps=60, batch_size=32, info_size=2, **kw),
                                    progress=False)
        z, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)), torch.zeros(64, dtype=torch.long)
        with torch.no_grad():
            x = torch.nn.functional.adaptive_avg_pool2d(generator.eval()(z, y, sample=False), 2).flatten(1)
        return torch.cdist(x, x).mean().item()

    assert coarse_spread(diversity_space="pooled", diversity_weight=0.1) > 2.5 * coarse_spread(diversity_weight=0.0)


def test_a_run_saved_before_the_new_terms_resumes_without_them(tmp_path):
    from generators.checkpoint import STATE_FILE

    teacher = tiny_teacher()
    old_terms = dict(diversity_space="feature", class_bn_weight=0.0, info_weight=0.0)
    train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", gen_config=GEN,
                    config=_config(steps=4, **old_terms), progress=False)
    state = torch.load(tmp_path / "g" / STATE_FILE, weights_only=True)
    for key in ("class_bn_weight", "class_bn_layers", "info_weight", "info_size", "input_weight"):  # as saved before
        del state["config"][key]
    del state["objective"]
    torch.save(state, tmp_path / "g" / STATE_FILE)
    log = tmp_path / "g" / "losses.csv"
    old_rows = list(csv.DictReader(open(log)))
    with open(log, "w", newline="") as f:  # the log as written before the input term existed: no "input" column
        writer = csv.DictWriter(f, fieldnames=[k for k in old_rows[0] if k != "input"])
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k != "input"} for r in old_rows)
    train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", resume=True, steps=8, progress=False)
    rows = list(csv.DictReader(open(log)))
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 9)]
    assert all(float(r["class_bn"]) == 0.0 and float(r["info"]) == 0.0 for r in rows)
    assert [r["input"] for r in rows[:4]] == [""] * 4 and all(float(r["input"]) == 0.0 for r in rows[4:])


def test_a_run_saved_with_the_defaults_before_2026_12_03_resumes_with_them(tmp_path, monkeypatch):
    """Steps, class-loss weight and mode-seeking space are saved with the run, so a run begun under the old
    defaults (800 steps, ce_weight 1.0, "pooled") keeps them when resumed under today's."""
    from generators.checkpoint import STATE_FILE, load_generator

    teacher, out = tiny_teacher(), tmp_path / "g"
    old = _config(steps=6, ce_weight=1.0, diversity_space="pooled", save_every=2)
    assert (old.ce_weight, old.diversity_space) != (GeneratorTrainConfig().ce_weight,
                                                     GeneratorTrainConfig().diversity_space)
    calls = {"n": 0}
    original = GeneratorObjective.forward

    def stop_at_step_3(self, generator, rng):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, generator, rng)

    monkeypatch.setattr(GeneratorObjective, "forward", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_generator(teacher, TINY_SPEC, out, teacher_name="tiny", gen_config=GEN, config=old, progress=False)
    monkeypatch.undo()
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 2
    train_generator(teacher, TINY_SPEC, out, teacher_name="tiny", resume=True, progress=False)
    record = load_generator(out, teacher_name="tiny")[1]["record"]
    assert record["step"] == 6
    assert (record["train_config"]["ce_weight"], record["train_config"]["diversity_space"]) == (1.0, "pooled")
