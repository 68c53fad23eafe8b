"""A ResNet-20 trained elsewhere, through every command: its checkpoint layout and input normalization given
once, recorded with the generator and the student, read back by the later commands."""

import argparse
import json

import pytest
import torch

from gznq.cli.eval_cli import main as eval_main
from gznq.cli.train_cli import main as train_main

CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616"


@pytest.fixture(scope="module")
def elsewhere(weights_dir, tmp_path_factory):
    """The published weights re-saved as another codebase saves them: DataParallel keys under 'model', beside
    its argparse options (the normalization is declared, not learned, so the weights serve for the test)."""
    sd = torch.load(weights_dir / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)["state_dict"]
    path = tmp_path_factory.mktemp("elsewhere") / "best.th"
    torch.save({"model": sd, "args": argparse.Namespace(arch="resnet20", lr=0.1), "epoch": 199}, path)
    return path


def test_spec_given_once_is_recorded_and_read_back(elsewhere, cifar_test_dir, tmp_path, capsys):
    teacher = ["--model", "cifar10_resnet20", "--checkpoint", str(elsewhere)]
    spec = ["--mean", CIFAR_MEAN, "--std", CIFAR_STD]
    gen = tmp_path / "gen"
    assert train_main(["generator", *teacher, *spec, "--steps", "2", "--batch-size", "8", "--width", "16",
                       "--out", str(gen), "--no-progress"]) == 0
    recorded = json.loads((gen / "generator.json").read_text())["input_spec"]
    assert recorded["mean"] == [0.4914, 0.4822, 0.4465] and recorded["std"] == [0.247, 0.2435, 0.2616]

    student = tmp_path / "student"  # no --mean/--std: they come from the generator
    assert train_main(["quantize", *teacher, "--source", f"generator:{gen}", "--calib-images", "16",
                       "--batch-size", "8", "--refine-steps", "0", "--out", str(student), "--no-progress"]) == 0
    meta = json.loads((student / "student.json").read_text())
    assert meta["input_spec"]["mean"] == [0.4914, 0.4822, 0.4465]

    capsys.readouterr()
    out = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", str(student), "--data", str(cifar_test_dir), "--limit", "40", "--workers", "0",
                      "--no-progress", "--json", str(out)]) == 0
    by_student = json.loads(out.read_text())["teacher_top1"]
    assert eval_main([*teacher, *spec, "--data", str(cifar_test_dir), "--limit", "40", "--workers", "0",
                      "--no-progress", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == by_student  # the recorded spec, not the zoo's
    assert eval_main([*teacher, "--data", str(cifar_test_dir), "--limit", "40", "--workers", "0",
                      "--no-progress", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] != by_student  # the zoo's normalization feeds it other inputs

    # another normalization than the generator's is refused, before any work
    capsys.readouterr()
    assert train_main(["quantize", *teacher, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--source",
                       f"generator:{gen}", "--calib-images", "16", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "trained for another input" in err and "mean" in err
    assert not (tmp_path / "other").exists()


def test_bad_spec_options_are_refused(elsewhere, cifar_test_dir, capsys):
    base = ["--model", "cifar10_resnet20", "--checkpoint", str(elsewhere), "--data", str(cifar_test_dir)]
    for bad, message in ((["--std", "0.2,0,0.2"], "std must be positive"),
                         (["--mean", "0.5,0.5"], "3 input channels"),
                         (["--num-classes", "100"], "--num-classes"),
                         (["--image-size", "4"], "at least 8 pixels")):
        assert eval_main(base + bad) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(base + ["--mean", "a,b,c"])


def test_a_memory_budget_that_holds_no_batch_is_refused_and_nothing_is_written(elsewhere, tmp_path, capsys):
    out = tmp_path / "student"
    for budget, message in (("0", "memory_mb must be positive"), ("0.01", "fewer than one batch")):
        assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(elsewhere), "--source",
                           "noise", "--refine-steps", "1", "--calib-images", "16", "--batch-size", "8",
                           "--method", "reconstruct", "--recon-memory-mb", budget, "--out", str(out),
                           "--no-progress", "--workers", "0"]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists() and not (tmp_path / "student.partial").exists()
