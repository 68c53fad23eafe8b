import dataclasses

import pytest
import torch

from generators.refine import RefineConfig
from gznq.pipeline import PipelineConfig
from gznq.sources import open_source, parse_source
from tests.generators.helpers import TINY_SPEC, batch_bn_kl, tiny_teacher


def _noise(refine, seed=0, num_images=16):
    return list(open_source(parse_source("noise"), teacher=tiny_teacher(), teacher_name="tiny", spec=TINY_SPEC,
                            num_images=num_images, batch_size=8, seed=seed, refine=refine))


def test_noise_source_gives_seeded_refined_batches_closer_to_the_bn_statistics():
    source = parse_source("noise")
    assert source.kind == "noise" and source.path is None and str(source) == "noise"
    batches = _noise(RefineConfig(steps=30, lr=0.1))
    assert [tuple(x.shape) for x, _ in batches] == [(8, 3, 8, 8)] * 2
    assert torch.equal(batches[0][1], torch.arange(8) % 4)
    again = _noise(RefineConfig(steps=30, lr=0.1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    assert not torch.equal(batches[0][0], _noise(RefineConfig(steps=30, lr=0.1), seed=1)[0][0])
    # refinement moved the noise toward the teacher's statistics
    pixels = batches[0][0] * 0.25 + 0.5  # un-normalize (TINY_SPEC: mean 0.5, std 0.25)
    start = torch.sigmoid(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert batch_bn_kl(tiny_teacher(), pixels) < 0.7 * batch_bn_kl(tiny_teacher(), start)


def test_noise_needs_refinement_and_cannot_be_distilled_on():
    with pytest.raises(ValueError, match="give refinement steps > 0"):
        _noise(None)
    with pytest.raises(ValueError, match="noise takes no path"):
        parse_source("noise:somewhere")
    with pytest.raises(ValueError, match="needs refine.steps > 0"):
        PipelineConfig(source="noise", refine=RefineConfig(steps=0))
    with pytest.raises(ValueError, match="no distill"):
        PipelineConfig(source="noise", methods=("reconstruct", "distill"))
    with pytest.raises(ValueError, match="refinement applies to generator and noise sources"):
        open_source(parse_source("pixels:somewhere"), teacher=tiny_teacher(), teacher_name="tiny", spec=TINY_SPEC,
                    num_images=8, refine=RefineConfig(steps=1))


def test_refinement_steps_left_open_are_chosen_by_the_setting():
    from dfq.quant import QuantConfig
    from generators.refine import default_refine_steps

    assert default_refine_steps(4, 4) == 64 and default_refine_steps(8, 4) == 64 and default_refine_steps(5, 5) == 10
    assert default_refine_steps(8, 3) == 50 and default_refine_steps(2, 4) == 50
    assert RefineConfig().steps is None
    w4 = PipelineConfig(source="noise", quant=QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    w3 = PipelineConfig(source="noise", quant=QuantConfig(w_bits=3, a_bits=3, protocol="paper"))
    assert (w4.refine_config().steps, w3.refine_config().steps) == (64, 50)
    assert dataclasses.replace(w4, quant=w3.quant).refine_config().steps == 50  # decided when asked, not when built
    given = PipelineConfig(source="noise", quant=QuantConfig(w_bits=3, a_bits=3), refine=RefineConfig(steps=7))
    assert given.refine_config().steps == 7
    with pytest.raises(ValueError, match="refinement steps must be >= 0"):
        RefineConfig(steps=-1)


def test_the_cache_key_of_refinement_leaves_out_later_fields_at_their_first_values():
    """Sets cached before the later fields existed keep their key; a set refined with another value gets its own."""
    import dataclasses

    from generators.refine import RefineConfig
    from gznq.sources import RefineKey

    plain = RefineConfig(steps=10)
    later = ", start_logit_scale=1.0, spread_weight=0.0, precision='float32', space='pixels', weight_lr=0.001"
    assert later in repr(plain)
    before = repr(plain).replace(later, "")  # the repr before those fields existed
    assert "start_logit_scale" not in before and "precision" not in before and repr(RefineKey(plain)) == before
    assert repr(RefineKey(plain)).startswith("RefineConfig(steps=10, lr=0.05, bn_loss='kl'")
    scaled = dataclasses.replace(plain, start_logit_scale=0.4)
    assert repr(RefineKey(scaled)) == repr(scaled).replace(
        ", spread_weight=0.0, precision='float32', space='pixels', weight_lr=0.001", "")
    assert "start_logit_scale=0.4" in repr(RefineKey(scaled))
    spread = dataclasses.replace(plain, spread_weight=0.02)
    assert repr(RefineKey(spread)).endswith("crop_scale=0.25, spread_weight=0.02)")
    bf16 = dataclasses.replace(plain, precision="bfloat16")
    assert repr(RefineKey(bf16)).endswith("crop_scale=0.25, precision='bfloat16')")
    assert repr(RefineKey(None)) == "None"
    through = dataclasses.replace(plain, space="generator")
    assert repr(RefineKey(through)).endswith("crop_scale=0.25, space='generator')")
    faster = dataclasses.replace(through, weight_lr=0.01)
    assert repr(RefineKey(faster)).endswith("crop_scale=0.25, space='generator', weight_lr=0.01)")


def test_the_cache_key_holds_a_later_field_whose_default_changed(monkeypatch):
    """A later field is left out at the value it had when it was added, not at today's default: had precision
    been added as bfloat16, today's float32 sets would be keyed apart from the sets cached then."""
    from gznq import sources

    plain = RefineConfig(steps=10)
    assert "precision" not in repr(sources.RefineKey(plain))
    monkeypatch.setitem(sources.LATER_REFINE_FIELDS_FIRST_VALUE, "precision", "bfloat16")
    assert repr(sources.RefineKey(plain)).endswith("crop_scale=0.25, precision='float32')")
    assert "precision" not in repr(sources.RefineKey(dataclasses.replace(plain, precision="bfloat16")))
    monkeypatch.delitem(sources.LATER_REFINE_FIELDS_FIRST_VALUE, "precision")
    with pytest.raises(RuntimeError, match="RefineConfig.precision is in neither"):
        repr(sources.RefineKey(plain))


def test_the_cache_key_tables_are_history():
    """The first values are what each field was when it was added (its commit), whatever its default is today,
    and no field is in both tables; an old set's key, written out, is still what the key spells."""
    from gznq import sources

    assert sources.LATER_REFINE_FIELDS_FIRST_VALUE == {"start_logit_scale": 1.0, "spread_weight": 0.0,
                                                        "precision": "float32", "space": "pixels", "weight_lr": 1e-3}
    assert not set(sources.FIRST_KEYED_REFINE_FIELDS) & sources.LATER_REFINE_FIELDS_FIRST_VALUE.keys()
    assert repr(sources.RefineKey(RefineConfig(steps=64))) == (
        "RefineConfig(steps=64, lr=0.05, bn_loss='kl', bn_weight=1.0, ce_weight=0.0, tv_weight=0.0, max_shift=2, "
        "flip=True, boundary_share=0.0, boundary_min=0.5, crop_scale=0.25)")


def test_the_image_cache_knows_a_generator_trained_again_at_the_same_path(tmp_path):
    """A set cached for a generator is not served for another generator later trained at the same path."""
    import shutil

    from generators.trainer import GeneratorTrainConfig, train_generator
    from gznq.sources import image_set
    from tests.generators.test_trainer import GEN

    teacher, path = tiny_teacher(), tmp_path / "g"

    def train(seed):
        shutil.rmtree(path, ignore_errors=True)
        train_generator(teacher, TINY_SPEC, path, teacher_name="tiny", gen_config=GEN, progress=False,
                        config=GeneratorTrainConfig(steps=2, batch_size=8, warmup_steps=1, seed=seed))

    def images():
        return image_set(parse_source(f"generator:{path}"), teacher=teacher, teacher_name="tiny", spec=TINY_SPEC,
                         num_images=8, batch_size=8, seed=0, refine=RefineConfig(steps=0),
                         cache_dir=tmp_path / "cache")

    train(0)
    first, _, cached = images()
    assert not cached and images()[2]  # the same generator: read from the cache
    train(1)
    second, _, cached = images()
    assert not cached and not torch.equal(first[0], second[0])
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2
