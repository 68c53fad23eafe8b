import json

import pytest

from bench.dfq_bench import parse_overrides
from bench.generator_bench import _SpecStub, check_kept, configs, parse_args


def test_variants_become_configs_with_the_bench_steps_and_seed_unless_they_set_them():
    gen, train = configs(parse_overrides("class_bn_weight=0.5, gen.latent_dim=32, steps=7"), _SpecStub(), 400, 3)
    assert (train.class_bn_weight, train.steps, train.seed, gen.latent_dim, gen.num_classes) == (0.5, 7, 3, 32, 10)
    _, train = configs({}, _SpecStub(), 400, 3)
    assert (train.steps, train.seed) == (400, 3)


@pytest.mark.parametrize("variant, message", [
    ("nameonly", "expected a new, plain NAME=OVERRIDES"),
    ("=info_weight=1.0", "expected a new, plain NAME=OVERRIDES"),
    ("a/b=", "expected a new, plain NAME=OVERRIDES"),
    ("x=class_bn_wieght=1.0", "GeneratorTrainConfig has no field(s) ['class_bn_wieght']"),
    ("x=gen.widht=8", "GeneratorConfig has no field(s) ['widht']"),
    ("x=info_weight=-1.0", "loss weights must be >= 0"),
])
def test_bad_variants_are_refused_before_any_training(variant, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--variant", variant, "--out", "unused"])
    assert message in capsys.readouterr().err


def test_a_variant_name_given_twice_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--variant", "a=", "--variant", "a=steps=5", "--out", "unused"])
    assert "expected a new, plain NAME=OVERRIDES" in capsys.readouterr().err


def test_a_kept_generator_is_reused_only_for_the_configs_it_was_trained_with():
    gen, train = configs({"steps": 7}, _SpecStub(), None, 0)
    meta = json.loads(json.dumps({"record": {"train_config": train.to_dict()}, "generator_config": gen.to_dict()}))
    check_kept(meta, gen, train, "kept")  # the same configs, as read back from JSON
    _, other = configs({"steps": 7, "class_bn_weight": 0.5}, _SpecStub(), None, 0)
    with pytest.raises(ValueError, match="trained with other configs"):
        check_kept(meta, gen, other, "kept")
    wider, _ = configs({"gen.width": 32}, _SpecStub(), None, 0)
    with pytest.raises(ValueError, match="trained with other configs"):
        check_kept(meta, wider, train, "kept")
