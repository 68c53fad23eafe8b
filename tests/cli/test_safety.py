"""No silent loss and no silent garbage: what the commands refuse, and what they keep."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gznq.cli.eval_cli import main as eval_main
from gznq.cli.train_cli import main as train_main


def _quantize(ckpt, source, out, *extra):
    return ["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source", source,
            "--calib-images", "32", "--batch-size", "32", "--refine-steps", "0", "--workers", "0", "--no-progress",
            "--out", str(out), *extra]


@pytest.fixture()
def ckpt(weights_dir):
    return str(weights_dir / "resnet20-12fca82f.th")


def test_quantize_refuses_an_out_that_is_not_a_student_and_replaces_its_own_only_when_asked(
        generator_dir, ckpt, tmp_path, capsys):
    source = f"generator:{generator_dir}"
    # a generator directory (or anything else that is not a student) is never written into
    assert train_main(_quantize(ckpt, source, generator_dir)) == 2
    assert "holds files that are not a gznq student; it is left untouched" in capsys.readouterr().err
    out = tmp_path / "s"
    assert train_main(_quantize(ckpt, source, out)) == 0
    first = (out / "student.safetensors").read_bytes()
    assert train_main(_quantize(ckpt, source, out, "--w-bits", "4")) == 2
    assert "already holds a gznq student; pass --overwrite" in capsys.readouterr().err
    assert (out / "student.safetensors").read_bytes() == first  # untouched
    assert train_main(_quantize(ckpt, source, out, "--w-bits", "4", "--overwrite")) == 0
    assert json.loads((out / "student.json").read_text())["quant_config"]["w_bits"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no partial or replaced copies left behind


def test_every_input_is_checked_before_any_work(generator_dir, ckpt, tmp_path, capsys, monkeypatch):
    from gznq import pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(pipeline, "quantize_model", no_work)
    out = tmp_path / "s"
    assert train_main(_quantize(ckpt, f"generator:{generator_dir}", out, "--eval-data", str(tmp_path / "nope"))) == 2
    err = capsys.readouterr().err
    assert "evaluation data" in err and "does not exist" in err
    assert train_main(_quantize(ckpt, f"generator:{tmp_path / 'no_generator'}", out)) == 2
    assert "does not exist; expected a generator directory made by `train.py generator`" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train_main(_quantize(ckpt, f"generator:{generator_dir}", out, "--eval-data", str(tmp_path / "empty"))) == 2
    assert "has no class subfolders" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "s.partial").exists()


def test_sample_refuses_a_foreign_folder_and_overwrites_its_own_when_asked(generator_dir, tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    args = ["sample", "--generator", str(generator_dir), "--num-images", "4", "--batch-size", "4"]
    assert train_main(args + ["--out", str(foreign)]) == 2
    assert "holds files that are not a gznq sample set" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]
    out = tmp_path / "s"
    assert train_main(args + ["--out", str(out)]) == 0
    assert train_main(args + ["--out", str(out)]) == 2
    assert "already holds a gznq sample set; pass --overwrite" in capsys.readouterr().err
    assert train_main(args + ["--out", str(out), "--num-images", "6", "--overwrite"]) == 0
    assert json.loads((out / "samples.json").read_text())["num_images"] == 6
    assert len(list(out.glob("*/*.png"))) == 6  # replaced, not added to


def test_generator_seed_fixes_the_initial_weights_and_resume_extends_or_says_why_not(weights_dir, tmp_path, capsys):
    base = ["generator", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
            "--batch-size", "8", "--width", "16", "--no-progress", "--seed", "3"]
    for name in ("a", "b"):
        assert train_main(base + ["--steps", "2", "--out", str(tmp_path / name)]) == 0
    a, b = (load_file(tmp_path / name / "generator.safetensors") for name in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same seed gives the same generator
    assert train_main(base + ["--steps", "2", "--out", str(tmp_path / "a"), "--resume"]) == 2
    assert "has trained 2 steps, as many as asked (2): nothing to do; pass --steps larger than 2" in capsys.readouterr().err
    assert train_main(base + ["--out", str(tmp_path / "a"), "--resume"]) == 2
    assert "as many as its run was set to (2)" in capsys.readouterr().err
    assert train_main(base + ["--steps", "4", "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert json.loads((tmp_path / "a" / "generator.json").read_text())["record"]["step"] == 4
    assert train_main(base + ["--steps", "4", "--out", str(tmp_path / "a")]) == 2
    assert "already holds a generator; pass --resume" in capsys.readouterr().err


def test_damaged_or_non_finite_files_are_refused_by_name(generator_dir, ckpt, tmp_path, capsys):
    import shutil

    broken = tmp_path / "gen"
    shutil.copytree(generator_dir, broken)
    weights = broken / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    assert train_main(_quantize(ckpt, f"generator:{broken}", tmp_path / "s")) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "not a readable safetensors file" in err
    tensors = load_file(generator_dir / "generator.safetensors")
    tensors["stem.weight"].view(-1)[0] = float("nan")
    save_file(tensors, weights)
    assert train_main(_quantize(ckpt, f"generator:{broken}", tmp_path / "s")) == 2
    assert "holds non-finite values (NaN or inf)" in capsys.readouterr().err
    # a student whose weights were damaged after saving
    out = tmp_path / "student"
    assert train_main(_quantize(ckpt, f"generator:{generator_dir}", out)) == 0
    student = load_file(out / "student.safetensors")
    student["conv1.weight"][0, 0, 0, 0] = float("inf")
    save_file(student, out / "student.safetensors")
    assert eval_main(["--checkpoint", str(out), "--data", str(tmp_path), "--no-progress"]) == 2
    assert "conv1.weight (1)" in capsys.readouterr().err


def test_an_unreadable_image_is_named(weights_dir, ckpt, tmp_path, capsys):
    data = tmp_path / "data"
    for c in range(10):
        (data / f"class{c}").mkdir(parents=True)
        torch.manual_seed(c)
        from torchvision.utils import save_image

        save_image(torch.rand(3, 32, 32), data / f"class{c}" / "ok.png")
    (data / "class3" / "fake.jpg").write_text("not an image")
    assert eval_main(["--model", "cifar10_resnet20", "--checkpoint", ckpt, "--data", str(data), "--no-progress",
                      "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "fake.jpg' cannot be read" in err and "Traceback" not in err


def test_a_checkpoint_with_pickled_objects_needs_trust(weights_dir, cifar_test_dir, tmp_path, capsys):
    import argparse

    from dfq.models import CifarResNet

    state = torch.load(weights_dir / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)
    state["args"] = argparse.Namespace(lr=0.1, arch="resnet20")  # as research training scripts save them
    with_options = tmp_path / "with_options.th"
    torch.save(state, with_options)
    args = ["--model", "cifar10_resnet20", "--data", str(cifar_test_dir), "--limit", "20", "--no-progress",
            "--workers", "0"]
    assert eval_main(args + ["--checkpoint", str(with_options)]) == 0  # a Namespace runs no code: allowed
    state["whole_model"] = CifarResNet(20)  # unpickling a module runs code from the file
    risky = tmp_path / "risky.th"
    torch.save(state, risky)
    capsys.readouterr()
    assert eval_main(args + ["--checkpoint", str(risky)]) == 2
    err = capsys.readouterr().err
    assert str(risky) in err and "--trust-checkpoint" in err
    assert eval_main(args + ["--checkpoint", str(risky), "--trust-checkpoint"]) == 0


def test_help_shows_defaults_and_ranges(capsys):
    with pytest.raises(SystemExit):
        train_main(["quantize", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "number of calibration images (default: 2048)" in text
    assert "weight bits, 2-8 (default: 8)" in text and "(default: 0.25)" in text


def test_the_saved_student_evaluates_to_what_the_report_says(weights_dir, cifar_train_dir, cifar_test_dir, ckpt,
                                                             tmp_path):
    # reconstruction leaves blocks in channels-last layout while it works; the report must still be the
    # accuracy of the student as saved, to the image
    out = tmp_path / "s"
    assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source",
                       f"real:{cifar_train_dir}", "--calib-images", "64", "--batch-size", "32", "--w-bits", "4",
                       "--a-bits", "4", "--protocol", "paper", "--method", "reconstruct", "--recon-iters", "5",
                       "--eval-data", str(cifar_test_dir), "--eval-limit", "300", "--workers", "0", "--no-progress",
                       "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert eval_main(["--checkpoint", str(out), "--data", str(cifar_test_dir), "--limit", "300", "--json",
                      str(tmp_path / "e.json"), "--no-progress", "--workers", "0"]) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    for key in ("top1", "top5", "teacher_top1", "agreement", "drop", "num_images"):
        assert again[key] == report[key], key
    # from the counts (teacher correct - student correct) / n, not a difference of two rounded percentages
    flips = report["drop"] * report["num_images"] / 100
    assert report["drop"] == 100 * round(flips) / report["num_images"]


def test_a_failed_evaluation_keeps_nothing_and_an_empty_split_is_refused_first(generator_dir, ckpt, tmp_path, capsys):
    from torchvision.utils import save_image

    data = tmp_path / "data"
    for c in range(10):
        (data / f"class{c}").mkdir(parents=True)
        save_image(torch.rand(3, 32, 32), data / f"class{c}" / "a.png")
    out = tmp_path / "s"
    # one image per class: the report half is empty, known before any work
    assert train_main(_quantize(ckpt, f"generator:{generator_dir}", out, "--eval-data", str(data),
                                "--eval-split", "report")) == 2
    err = capsys.readouterr().err
    assert "the 'report' half of" in err and "holds no images" in err
    (data / "class3" / "b.jpg").write_text("not an image")  # found only when evaluation reaches it
    assert train_main(_quantize(ckpt, f"generator:{generator_dir}", out, "--eval-data", str(data))) == 2
    assert "b.jpg' cannot be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no student, no OUT.partial
