import pytest

from dfq.quant.recon_defaults import recon_defaults


@pytest.mark.parametrize(("protocol", "w_bits", "a_bits", "augment", "last_block"), [
    ("paper", 4, 4, 2, False),    # copies + classifier as calibrated: best on the select split at W4A4 paper
    ("paper", 3, 3, 0, True),     # at W3A3 paper nothing beat the plain pipeline
    ("paper", 5, 5, 2, True),     # copies helped at W5A5 paper
    ("paper", 8, 8, 2, True),
    ("paper", 4, 8, 2, False),    # the narrower width decides
    ("paper", 8, 3, 0, True),
    ("deploy", 4, 4, 0, True),    # under deploy nothing beat the plain pipeline by more than 0.1
    ("deploy", 3, 3, 0, True),
    ("deploy", 5, 5, 0, True),
])
def test_recon_defaults_by_setting(protocol, w_bits, a_bits, augment, last_block):
    options = recon_defaults(protocol, w_bits, a_bits)
    assert (options.augment, options.last_block) == (augment, last_block)
    assert protocol in options.why


def test_recon_defaults_refuse_an_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'fast'; choose one of paper, deploy"):
        recon_defaults("fast", 4, 4)


@pytest.mark.parametrize("protocol", ["paper", "deploy"])
def test_real_images_keep_the_plain_reconstruction(protocol):
    options = recon_defaults(protocol, 4, 4, synthetic=False)
    assert (options.augment, options.last_block) == (0, True)
    assert "real images" in options.why


def test_given_options_win_over_the_setting():
    half_given = recon_defaults("paper", 4, 4, augment=0)
    assert (half_given.augment, half_given.last_block) == (0, False)  # last_block still by the setting
    assert "paper, 4 bits" in half_given.why
    assert recon_defaults("paper", 5, 5, last_block=False).augment == 2  # the open one still by the setting
    given = recon_defaults("paper", 4, 4, augment=1, last_block=True)
    assert (given.augment, given.last_block, given.why) == (1, True, "")
