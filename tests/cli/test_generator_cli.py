import json

import numpy as np
import pytest
import torch
from PIL import Image

from generators.refine import RefineConfig
from gznq.cli.eval_cli import main as eval_main
from gznq.cli.train_cli import main as train_main


def test_generator_run_writes_checkpoint_logs_and_grid(generator_dir):
    meta = json.loads((generator_dir / "generator.json").read_text())
    assert meta["teacher"] == "cifar10_resnet20" and meta["record"]["step"] == 3
    assert (generator_dir / "samples.png").is_file() and (generator_dir / "losses.csv").is_file()


def test_generator_input_weight_reaches_the_run(weights_dir, tmp_path):
    """--input-weight is the input-statistics term: recorded in the run's config and logged, nonzero, as 'input'
    (0 in a run without it: the conftest generator)."""
    out = tmp_path / "gen"
    assert train_main(["generator", "--model", "cifar10_resnet20",
                       "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"), "--steps", "2", "--batch-size", "8",
                       "--width", "16", "--input-weight", "2.5", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "generator.json").read_text())["record"]["train_config"]["input_weight"] == 2.5
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0].split(",")[6] == "input" and float(rows[-1].split(",")[6]) > 0


def test_sample_writes_an_image_folder(generator_dir, tmp_path):
    assert train_main(["sample", "--generator", str(generator_dir), "--num-images", "25", "--out", str(tmp_path / "s")]) == 0
    folders = sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir())
    assert folders == [str(i) for i in range(10)]
    assert sum(len(list((tmp_path / "s" / f).glob("*.png"))) for f in folders) == 25
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["num_images"] == 25


def test_sample_refined_differs_from_raw(generator_dir, weights_dir, tmp_path):
    ckpt = str(weights_dir / "resnet20-12fca82f.th")
    for name, steps in (("raw", "0"), ("refined", "3")):
        assert train_main(["sample", "--generator", str(generator_dir), "--num-images", "4", "--batch-size", "4",
                           "--refine-steps", steps, "--checkpoint", ckpt, "--out", str(tmp_path / name)]) == 0
    raw, refined = (sorted((tmp_path / name).glob("*/*.png")) for name in ("raw", "refined"))
    assert [p.relative_to(tmp_path / "raw") for p in raw] == [p.relative_to(tmp_path / "refined") for p in refined]
    pixels = [[torch.from_numpy(np.array(Image.open(p))) for p in files] for files in (raw, refined)]
    assert any(not torch.equal(a, b) for a, b in zip(*pixels))
    # refinement from start crops: the same files, other images
    assert train_main(["sample", "--generator", str(generator_dir), "--num-images", "4", "--batch-size", "4",
                       "--refine-steps", "3", "--refine-crop-scale", "0.3", "--checkpoint", ckpt,
                       "--out", str(tmp_path / "cropped")]) == 0
    cropped = sorted((tmp_path / "cropped").glob("*/*.png"))
    assert [p.relative_to(tmp_path / "cropped") for p in cropped] == [p.relative_to(tmp_path / "raw") for p in raw]
    assert all(not torch.equal(torch.from_numpy(np.array(Image.open(p))), b) for p, b in zip(cropped, pixels[1]))


def test_quantize_from_generator_and_pixels(generator_dir, weights_dir, tmp_path, capsys):
    ckpt = str(weights_dir / "resnet20-12fca82f.th")
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source",
                       f"generator:{generator_dir}", "--calib-images", "64", "--batch-size", "32",
                       "--refine-steps", "0", "--out", str(tmp_path / "sg")])
    assert code == 0, capsys.readouterr().err
    metadata = json.loads((tmp_path / "sg" / "student.json").read_text())["metadata"]
    assert metadata["source"].startswith("generator:") and "refine_steps" not in metadata
    assert train_main(["pixels", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--num-images", "16",
                       "--batch-size", "16", "--iterations", "2", "--out", str(tmp_path / "px")]) == 0
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source",
                       f"pixels:{tmp_path / 'px'}", "--calib-images", "16", "--out", str(tmp_path / "sp")])
    assert code == 0, capsys.readouterr().err


def test_reconstruct_from_generator(generator_dir, weights_dir, cifar_test_dir, tmp_path, capsys):
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                       "--source", f"generator:{generator_dir}", "--calib-images", "64", "--batch-size", "32",
                       "--w-bits", "4", "--a-bits", "4", "--protocol", "paper", "--method", "reconstruct",
                       "--recon-images", "64", "--recon-iters", "3", "--recon-drop", "0.5", "--refine-steps", "2",
                       "--refine-precision", "bfloat16", "--eval-data", str(cifar_test_dir), "--eval-limit", "40", "--workers", "0", "--out", str(tmp_path / "sr")])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "sr" / "report.json").read_text())
    assert report["method"] == "calibrate,reconstruct" and report["refine_steps"] == 2 and report["num_images"] == 40
    assert report["refine_crop_scale"] == 0.25 and report["refine_ce_weight"] == RefineConfig.ce_weight
    assert report["refine_precision"] == "bfloat16"
    saved = json.loads((tmp_path / "sr" / "student.json").read_text())["metadata"]
    assert report["seconds"] == saved["seconds"] and report["eval_seconds"] > 0  # evaluation time kept apart
    assert [r["block"] for r in report["reconstruct"]][:2] == ["conv1", "layer1.0"]
    # options left open are chosen by the setting: at W4A4 paper, 2 jittered copies, classifier as calibrated
    assert report["recon_augment"] == 2 and report["recon_last_block"] is False
    assert "paper, 4 bits" in report["recon_defaults"]
    assert [r["block"] for r in report["reconstruct"]][-1] != "linear"  # the classifier left as calibrated
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        train_main(["quantize", "--model", "cifar10_resnet20", "--source", "real:/x", "--method", "prune",
                    "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "unknown method" in capsys.readouterr().err
    assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                       "--source", f"generator:{generator_dir}", "--calib-images", "32", "--method", "reconstruct",
                       "--recon-drop", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "drop_prob must be in [0, 1)" in capsys.readouterr().err
    assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                       "--source", f"generator:{generator_dir}", "--refine-steps", "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "refinement steps must be >= 0" in capsys.readouterr().err
    assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                       "--source", f"generator:{generator_dir}", "--refine-crop-scale", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "crop_scale is the smallest share of an image a start crop keeps" in capsys.readouterr().err
    assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
                       "--source", f"generator:{generator_dir}", "--refine-ce-weight", "-0.5", "--out", str(tmp_path / "bad")]) == 2
    assert "refinement loss weights must be finite and >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a precision refinement does not offer: argparse's usage error
        train_main(["quantize", "--model", "cifar10_resnet20", "--source", f"generator:{generator_dir}",
                    "--refine-precision", "float16", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "invalid choice: 'float16'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # every refusal above before anything was written


def test_reconstruct_on_the_calibration_images(generator_dir, weights_dir, tmp_path, capsys, monkeypatch):
    from gznq import pipeline

    seen = {}
    real_calibrate, real_reconstruct = pipeline.calibrate, pipeline.reconstruct

    def calibrate(model, batches, **kw):
        seen["calib"] = torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in batches])
        return real_calibrate(model, seen["calib"].split(16), **kw)

    def reconstruct(student, teacher, images, config, **kw):
        seen["recon"] = torch.cat(list(images))
        return real_reconstruct(student, teacher, images, config, **kw)

    monkeypatch.setattr(pipeline, "calibrate", calibrate)
    monkeypatch.setattr(pipeline, "reconstruct", reconstruct)
    args = ["quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
            "--source", f"generator:{generator_dir}", "--calib-images", "64", "--batch-size", "32", "--w-bits", "4",
            "--a-bits", "4", "--protocol", "paper", "--method", "reconstruct", "--recon-iters", "2",
            "--refine-steps", "2", "--workers", "0", "--recon-from-calib", "--recon-augment", "0", "--recon-last-block"]
    assert train_main(args + ["--recon-images", "48", "--out", str(tmp_path / "s")]) == 0, capsys.readouterr().err
    assert seen["calib"].shape[0] == 64 and torch.equal(seen["recon"], seen["calib"][:48])
    metadata = json.loads((tmp_path / "s" / "student.json").read_text())["metadata"]
    assert metadata["recon_from_calib"] is True and metadata["recon_images"] == 48
    assert metadata["recon_augment"] == 0 and metadata["recon_last_block"] is True  # explicit options win
    assert "recon_defaults" not in metadata
    assert train_main(args + ["--recon-images", "65", "--out", str(tmp_path / "bad")]) == 2
    assert "recon_images (65) must not exceed calib_images (64)" in capsys.readouterr().err


def test_generator_for_another_teacher_is_refused(generator_dir, tmp_path, capsys):
    code = train_main(["quantize", "--model", "cifar10_resnet32", "--source", f"generator:{generator_dir}",
                       "--out", str(tmp_path / "x")])
    assert code == 2
    assert "trained for teacher 'cifar10_resnet20', not 'cifar10_resnet32'" in capsys.readouterr().err


def test_generator_quality_report(generator_dir, weights_dir, cifar_test_dir, tmp_path):
    out = tmp_path / "q.json"
    code = eval_main(["--generator", str(generator_dir), "--model", "cifar10_resnet20", "--checkpoint",
                      str(weights_dir / "resnet20-12fca82f.th"), "--data", str(cifar_test_dir), "--num-images", "64",
                      "--batch-size", "32", "--json", str(out), "--workers", "0"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["num_images"] == 64 and 0 <= report["teacher_top1"] <= 100
    assert report["bn_kl"] > 0 and report["real_diversity"] > 0 and report["images_per_second"] > 0
    assert report["pixel_diversity"] > 0 and report["pixel_diversity_ratio"] == pytest.approx(
        report["pixel_diversity"] / report["real_pixel_diversity"])
    assert 0.1 <= report["confidence"] <= 1 and 0.1 <= report["real_confidence"] <= 1


def test_distill_interrupted_then_resumed(generator_dir, weights_dir, tmp_path, capsys, ctrl_c_at_distill_step):
    from safetensors.torch import load_file

    ckpt = str(weights_dir / "resnet20-12fca82f.th")
    out = tmp_path / "sd"
    base = ["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source", f"generator:{generator_dir}",
            "--calib-images", "32", "--batch-size", "32", "--w-bits", "4", "--a-bits", "4", "--protocol", "paper",
            "--method", "distill", "--refine-steps", "0", "--distill-steps", "4", "--distill-batch-size", "16",
            "--save-every", "2", "--generator-every", "2", "--no-progress", "--workers", "0"]
    args = base + ["--out", str(out)]
    with ctrl_c_at_distill_step(3):
        assert train_main(args) == 130
    assert "continue with the same command and --resume" in capsys.readouterr().out
    partial = tmp_path / "sd.partial"
    assert not out.exists()  # nothing half-written where the student goes
    meta = json.loads((partial / "student.json").read_text())
    assert meta["metadata"]["distill_step"] == 2
    # the interrupted run's student evaluates
    assert eval_main(["--checkpoint", str(partial), "--data", str(weights_dir.parent / "cifar10-jpeg" / "test"),
                      "--limit", "20", "--no-progress", "--workers", "0"]) == 0
    assert train_main(args) == 2  # a new run would discard the interrupted one: it must be asked for
    assert "holds an interrupted run; pass --resume" in capsys.readouterr().err
    assert train_main(args + ["--resume", "--w-bits", "8"]) == 2  # not the run that was interrupted
    assert "started with other options (quant)" in capsys.readouterr().err
    assert train_main(args + ["--resume"]) == 0, capsys.readouterr().err
    assert not partial.exists()
    report = json.loads((out / "report.json").read_text())
    assert report["distill_steps"] == 4 and report["method"] == "calibrate,distill"
    rows = (out / "distill_log.csv").read_text().splitlines()
    # columns known up front: every loss, the generator's too (averaged over the steps since the last row)
    assert rows[0] == "step,seconds,kl,agree,g_bn,g_ce,g_div,g_adv" and len(rows) == 2
    assert all(cell != "" for cell in rows[1].split(","))
    assert (out / "distill_log.png").is_file()
    # the resumed run ends where an uninterrupted one does
    assert train_main(base + ["--out", str(tmp_path / "whole")]) == 0
    resumed, whole = load_file(out / "student.safetensors"), load_file(tmp_path / "whole" / "student.safetensors")
    assert resumed.keys() == whole.keys()
    assert [k for k in whole if not torch.equal(resumed[k].nan_to_num(), whole[k].nan_to_num())] == []
    # an existing student is replaced only when asked
    assert train_main(args) == 2
    assert "already holds a gznq student; pass --overwrite" in capsys.readouterr().err


def test_bad_generator_terms_and_a_bare_noise_source_are_refused_before_any_work(weights_dir, tmp_path, capsys):
    out = tmp_path / "gen"
    code = train_main(["generator", "--model", "cifar10_resnet20", "--checkpoint",
                       str(weights_dir / "resnet20-12fca82f.th"), "--class-bn-weight", "-1", "--out", str(out)])
    assert code == 2 and "loss weights must be >= 0" in capsys.readouterr().err
    assert not out.exists()
    code = train_main(["generator", "--model", "cifar10_resnet20", "--checkpoint",
                       str(weights_dir / "resnet20-12fca82f.th"), "--input-weight", "-0.5", "--out", str(out)])
    assert code == 2 and "loss weights must be >= 0" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        train_main(["generator", "--model", "cifar10_resnet20", "--class-bn-layers", "0", "--out", str(out)])
    for bad in ("latent", "pooled+latent"):
        code = train_main(["generator", "--model", "cifar10_resnet20", "--checkpoint",
                           str(weights_dir / "resnet20-12fca82f.th"), "--diversity-space", bad, "--out", str(out)])
        assert code == 2 and f"joined by '+' in that order (e.g. 'pooled+feature'), got '{bad}'" in capsys.readouterr().err
    assert not out.exists()
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--source", "noise", "--refine-steps", "0",
                       "--out", str(tmp_path / "student")])
    assert code == 2 and "the noise source only starts refinement" in capsys.readouterr().err
    assert not (tmp_path / "student").exists() and not (tmp_path / "student.partial").exists()


def test_refinement_through_the_generator_from_the_command_line(generator_dir, weights_dir, tmp_path, capsys):
    ckpt = str(weights_dir / "resnet20-12fca82f.th")
    common = ["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source", f"generator:{generator_dir}",
              "--calib-images", "32", "--batch-size", "16", "--method", "calibrate", "--refine-steps", "2"]
    code = train_main([*common, "--refine-space", "generator", "--refine-weight-lr", "0.002", "--out",
                       str(tmp_path / "g")])
    assert code == 0, capsys.readouterr().err
    metadata = json.loads((tmp_path / "g" / "student.json").read_text())["metadata"]
    assert metadata["refine_space"] == "generator" and metadata["refine_weight_lr"] == 0.002
    assert "refine_crop_scale" not in metadata  # the crops are pixel refinement's
    assert train_main([*common, "--refine-weight-lr", "0.002", "--out", str(tmp_path / "bad")]) == 2
    assert "give space='generator' (--refine-space generator) with it" in capsys.readouterr().err
    assert train_main([*common, "--refine-space", "generator", "--refine-weight-lr", "-1", "--out",
                       str(tmp_path / "bad")]) == 2
    assert "weight_lr must be a finite number >= 0" in capsys.readouterr().err
    assert train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source", "noise",
                       "--calib-images", "32", "--refine-steps", "2", "--refine-space", "generator", "--out",
                       str(tmp_path / "bad")]) == 2
    assert "needs a generator source, not noise:" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
