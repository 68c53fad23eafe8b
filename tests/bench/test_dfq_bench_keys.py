from bench.dfq_bench import away_from_first_defaults, refine_key
from generators.refine import RefineConfig

# the repr that named cached image sets before RefineConfig had crop_scale
OLD_DEFAULT = ("RefineConfig(steps=50, lr=0.05, bn_loss='kl', bn_weight=1.0, ce_weight=1.0, tv_weight=0.0, "
               "max_shift=2, flip=True, boundary_share=0.0, boundary_min=0.5)")


def test_sets_cached_before_a_new_refine_field_keep_their_key():
    assert refine_key(RefineConfig(steps=50, crop_scale=1.0, ce_weight=1.0)) == OLD_DEFAULT
    assert refine_key(None) == "None"


def test_a_new_field_away_from_its_default_changes_the_key():
    key = refine_key(RefineConfig(steps=50, crop_scale=0.25, ce_weight=1.0))
    assert key == OLD_DEFAULT[:-1] + ", crop_scale=0.25)"


def test_a_row_names_the_fields_away_from_their_first_defaults():
    assert away_from_first_defaults(RefineConfig(crop_scale=1.0, ce_weight=1.0)) == {}
    assert away_from_first_defaults(RefineConfig(crop_scale=0.1, ce_weight=1.0)) == {"crop_scale": 0.1}
    assert away_from_first_defaults(RefineConfig(crop_scale=1.0, ce_weight=0.0)) == {"ce_weight": 0.0}
    # the defaults of today differ from the first ones in both
    assert away_from_first_defaults(RefineConfig()) == {"crop_scale": 0.25, "ce_weight": 0.0}


def test_a_field_that_was_always_in_the_key_is_keyed_by_its_value():
    assert refine_key(RefineConfig(steps=50, crop_scale=1.0, ce_weight=0.0)) == OLD_DEFAULT.replace("ce_weight=1.0",
                                                                                                    "ce_weight=0.0")
