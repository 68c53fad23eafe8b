import json
import math

import pytest
import torch

from bench.set_stats import class_entropy, main, parse_args, pixel_saturation, rescaled, set_stats, standardized
from generators.bn_stats import BNStatsRecorder, bn_kl_loss
from generators.network import normalize
from generators.quality import capture_penultimate, within_class_distance
from tests.generators.helpers import tiny_teacher


def test_standardized_sets_each_channel_to_mean_0_std_1_after_normalization():
    g = torch.Generator().manual_seed(0)
    # normalized images, uniform per channel (so standardized within +-1.74: inside the pixel range below)
    # with channel means 0.2, -0.1, 0 and spreads 1.5, 0.6, 1.0
    images = torch.rand(64, 3, 8, 8, generator=g) * torch.tensor([1.5, 0.6, 1.0]).view(1, 3, 1, 1) \
        + torch.tensor([0.2, -0.1, 0.0]).view(1, 3, 1, 1)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pixels = standardized(images, mean, std)
    assert pixels.min() >= 0 and pixels.max() <= 1
    back = normalize(pixels, mean, std)
    torch.testing.assert_close(back.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(back.std((0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_rescaled_changes_contrast_only():
    """The set's std becomes the asked contrast; channel means and the channels' std ratios are kept."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 8, 8, generator=g) * torch.tensor([1.5, 0.6, 1.0]).view(1, 3, 1, 1) \
        + torch.tensor([0.2, -0.1, 0.0]).view(1, 3, 1, 1)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # normalized +-2 fits in the pixel range
    back = normalize(rescaled(images, mean, std, 0.4), mean, std)
    torch.testing.assert_close(back.std(), torch.tensor(0.4), atol=1e-4, rtol=0)
    torch.testing.assert_close(back.mean((0, 2, 3)), images.mean((0, 2, 3)), atol=1e-5, rtol=0)
    ratios = back.std((0, 2, 3)) / images.std((0, 2, 3))
    torch.testing.assert_close(ratios, ratios[:1].expand(3), atol=1e-4, rtol=0)
    assert 0.3 < ratios[0] < 0.9  # shrunk, by one factor
    with pytest.raises(ValueError, match="channel means alone give a std of 0.30"):
        rescaled(images, mean, std, 0.1)
    with pytest.raises(ValueError, match="no contrast to scale"):
        rescaled(torch.zeros(4, 3, 2, 2), mean, std, 1.0)
    # raising the contrast meets the pixel range: clamped, so the std reached is below the one asked
    raised = normalize(rescaled(images, mean, std, 3.0), mean, std)
    assert raised.min() >= -2 - 1e-5 and raised.max() <= 2 + 1e-5 and 1.0 < raised.std() < 3.0


def test_pixel_saturation_known_values():
    pixels = torch.tensor([0.0, 0.5, 0.99, 0.3])  # two of four within 0.05 of black or white
    logits = [math.log((1 - 1e-4) / 1e-4), 0.0, math.log(0.99 / 0.01), math.log(0.7 / 0.3)]
    assert pixel_saturation(pixels) == {"near_black_or_white": 0.5, "mean_abs_logit": round(sum(logits) / 4, 2)}


def test_class_entropy_known_values():
    assert class_entropy(torch.zeros(8, dtype=torch.long), 4) == 0  # one class
    assert abs(class_entropy(torch.arange(8) % 4, 4) - math.log(4)) < 1e-6  # balanced
    assert abs(class_entropy(torch.tensor([0, 0, 0, 1]), 4) - (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))) < 1e-6


def test_set_stats_reads_contrast_confidence_and_bn_kl():
    teacher = tiny_teacher().eval()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 3, 8, 8, generator=g) * 2.0 + 0.5 for _ in range(2)]
    stats = set_stats(teacher, batches)
    images = torch.cat(batches)
    with torch.no_grad(), capture_penultimate(teacher) as captured:
        probs = teacher(images).softmax(1)
    top, predicted = probs.max(1)
    kl = []
    for x in batches:
        with torch.no_grad(), BNStatsRecorder(teacher) as rec:
            teacher(x)
        kl.append(bn_kl_loss(rec.stats).item())
    assert stats["images"] == 32 and stats["std"] == round(images.std().item(), 3)
    assert stats["channel_mean"] == [round(v, 3) for v in images.mean((0, 2, 3)).tolist()]
    assert stats["channel_std"] == [round(v, 3) for v in images.std((0, 2, 3)).tolist()]
    assert stats["confidence"] == round(top.mean().item(), 3)
    assert stats["below_0.9"] == round((top < 0.9).float().mean().item(), 3)
    assert stats["feature_spread"] == round(within_class_distance(captured[-1], predicted), 3)
    assert stats["class_entropy"] == round(class_entropy(predicted, 4), 3)
    assert 0 <= stats["class_entropy"] <= 1.387 + 1e-3  # at most log 4 for the tiny teacher's 4 classes
    assert stats["batch_bn_kl"] == round(sum(kl) / 2, 4) and stats["batch_bn_kl"] > 0.1  # far from the BN statistics


def test_bad_outputs_and_comparisons_are_refused_before_any_work(tmp_path, capsys):
    """A written set never replaces anything but such a set, and that only with --overwrite; --compare needs a
    pixel set of at least this set's size."""
    args = ["--source", "noise", "--refine-steps", "1"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    for extra in ([], ["--overwrite"]):  # a directory of other files: never, --overwrite or not
        with pytest.raises(SystemExit):
            parse_args(args + ["--standardize", str(other)] + extra)
        assert "holds files that are not a pixel set" in capsys.readouterr().err
    assert (other / "mine.txt").read_text() == "keep"
    written = tmp_path / "set"
    written.mkdir()
    (written / "pixels.json").write_text(json.dumps({"num_images": 4}))
    (written / "pixels.safetensors").write_text("")
    with pytest.raises(SystemExit):
        parse_args(args + ["--unchanged", str(written)])
    assert "--unchanged '" in (err := capsys.readouterr().err) and "already holds a pixel set" in err
    assert parse_args(args + ["--standardize", str(written), "--overwrite"]).overwrite
    with pytest.raises(SystemExit):
        parse_args(args + ["--standardize", "a", "--unchanged", "b"])
    assert "give one" in capsys.readouterr().err
    for bad, message in ((["--rescale", "r"], "go together"), (["--contrast", "1.0"], "go together"),
                         (["--rescale", "r", "--contrast", "0"], "must be a positive number"),
                         (["--rescale", "r", "--contrast", "nan"], "must be a positive number"),
                         (["--rescale", "r", "--contrast", "1", "--unchanged", "u"], "give one"),
                         (["--start-logit-scale", "nan"], "must be a positive number"),
                         (["--start-logit-scale", "0"], "must be a positive number"),
                         (["--spread-weight", "-1"], "must be a number >= 0"),
                         (["--spread-weight", "nan"], "must be a number >= 0")):
        with pytest.raises(SystemExit):
            parse_args(args + bad)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no refinement, nothing to scale
        parse_args(["--source", "noise", "--start-logit-scale", "0.5"])
    assert "give --refine-steps > 0 with it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--source", "noise", "--spread-weight", "0.02"])
    assert "weights a refinement term: give --refine-steps > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(args + ["--compare", str(other)])
    assert "is not a pixel set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(args + ["--compare", str(written), "--num-images", "8"])
    assert "holds 4 images, fewer than the 8" in capsys.readouterr().err


def test_unchanged_standardized_and_compare_through_the_command(weights_dir, tmp_path):
    """The control round trip changes images by float rounding only; the standardized copy has std 1; --record
    keeps what is printed."""
    common = ["--checkpoint", str(weights_dir / "resnet20-12fca82f.th"), "--source", "noise", "--refine-steps", "1",
              "--num-images", "8", "--batch-size", "4", "--image-cache", str(tmp_path / "cache")]
    main(common + ["--unchanged", str(tmp_path / "u"), "--record", str(tmp_path / "u.json")])
    made = json.loads((tmp_path / "u.json").read_text())
    assert made["images"] == 8 and made["from_cache"] is False and made["written"]["standardized"] is False
    main(common + ["--compare", str(tmp_path / "u"), "--standardize", str(tmp_path / "s"), "--record",
                   str(tmp_path / "s.json")])
    again = json.loads((tmp_path / "s.json").read_text())
    assert again["from_cache"] is True and again["compared"]["max_abs_difference"] < 1e-5
    assert abs(again["written"]["std"] - 1.0) < 0.05
    assert json.loads((tmp_path / "s" / "standardized.json").read_text())["made_from"]["source"] == "noise"
    # a contrast below what the channel means alone give: a clear error, nothing written
    with pytest.raises(SystemExit, match="--contrast 0.001: the channel means alone give a std of"):
        main(common + ["--rescale", str(tmp_path / "r"), "--contrast", "0.001"])
    assert not (tmp_path / "r").exists()
