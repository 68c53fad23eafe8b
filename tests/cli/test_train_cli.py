import json

import pytest

from gznq.cli.eval_cli import main as eval_main
from gznq.cli.train_cli import main as train_main


def test_quantize_from_real_images_then_evaluate(weights_dir, cifar_train_dir, cifar_test_dir, tmp_path, capsys):
    ckpt = str(weights_dir / "resnet20-12fca82f.th")
    out = tmp_path / "student"
    code = train_main([
        "quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source", f"real:{cifar_train_dir}",
        "--calib-images", "256", "--w-bits", "8", "--a-bits", "8", "--protocol", "deploy", "--method", "calibrate",
        "--out", str(out), "--workers", "0",
    ])
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / "student.json").read_text())
    assert meta["quant_config"]["w_bits"] == 8 and meta["metadata"]["calib_images"] == 256

    result_file = tmp_path / "eval.json"
    code = eval_main(["--checkpoint", str(out), "--data", str(cifar_test_dir), "--limit", "500",
                      "--json", str(result_file), "--no-progress", "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(result_file.read_text())
    assert result["num_images"] == 500
    assert {"agreement", "teacher_top1", "top1", "top5"} <= set(result)
    assert abs(result["teacher_top1"] - result["top1"]) <= 1.0 and result["agreement"] >= 95.0


def test_unknown_source_kind_is_reported(tmp_path, capsys):
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--source", "imagenet:/x", "--out", str(tmp_path)])
    assert code == 2
    assert "unknown source kind 'imagenet'" in capsys.readouterr().err


def test_bits_out_of_range_are_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["quantize", "--model", "cifar10_resnet20", "--source", "real:/x", "--w-bits", "9",
                    "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --w-bits: bits must be an integer from 2 to 8, got 9" in capsys.readouterr().err


def test_negative_recon_augment_is_reported(tmp_path, capsys):
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--source", "real:/x", "--method", "reconstruct",
                       "--recon-augment", "-1", "--out", str(tmp_path)])
    assert code == 2
    assert "recon_augment is a number of copies and must be >= 0, got -1" in capsys.readouterr().err


def test_recon_augment_that_is_not_a_number_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        train_main(["quantize", "--model", "cifar10_resnet20", "--source", "real:/x", "--method", "reconstruct",
                    "--recon-augment", "two", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "expected a number of copies or 'auto', got 'two'" in capsys.readouterr().err


def test_reconstruct_on_real_images_keeps_the_plain_options(weights_dir, cifar_train_dir, tmp_path, capsys):
    out = tmp_path / "student"
    code = train_main([
        "quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
        "--source", f"real:{cifar_train_dir}", "--calib-images", "32", "--batch-size", "16", "--w-bits", "4",
        "--a-bits", "4", "--protocol", "paper", "--method", "reconstruct", "--recon-iters", "1", "--out", str(out),
        "--workers", "0",
    ])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    # the options chosen for generated images (copies, classifier as calibrated) are not applied to real ones
    assert report["recon_augment"] == 0 and report["recon_last_block"] is True
    assert "real images" in report["recon_defaults"]
    assert report["reconstruct"][-1]["block"] == "linear"  # the classifier was reconstructed
