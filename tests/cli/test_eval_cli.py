import json

import pytest

from gznq.cli.eval_cli import main

# Measured on the shared cifar10-jpeg/test: the full set gives 81.03; its ten disjoint class-balanced
# subsets of 1,000 (images 100j..100j+99 of every class) range from 80.4 to 82.3 (std 0.58).
FULL_SET_TOP1 = 81.03


def test_resnet20_on_a_balanced_1000_image_subset(weights_dir, cifar_test_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(
        ["--model", "cifar10_resnet20", "--data", str(cifar_test_dir), "--checkpoint",
         str(weights_dir / "resnet20-12fca82f.th"), "--limit", "1000", "--json", str(out), "--no-progress"]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["num_images"] == 1000
    assert abs(result["top1"] - FULL_SET_TOP1) <= 1.5
    assert result["top5"] >= result["top1"] and result["seconds"] > 0
    assert "cifar10_resnet20" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet20", "--data", "."], "unknown model 'resnet20'"),
        (["--model", "cifar10_resnet20", "--data", "/no/such/dir", "--checkpoint", "/no/such.th"], "does not exist"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(args, message, capsys):
    assert main(args + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_wrong_data_folder_is_reported(weights_dir, tmp_path, capsys):
    (tmp_path / "only_one_class" / "a").mkdir(parents=True)
    code = main(["--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                 "--data", str(tmp_path / "only_one_class"), "--no-progress"])
    assert code == 2
    assert "holds no images" in capsys.readouterr().err
