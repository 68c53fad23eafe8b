import json

import pytest
import torch

from dfq import QuantConfig, calibrate, quantize_model, save_student
from dfq.models import create_teacher

from gznq.cli.eval_cli import main as eval_main
from gznq.cli.train_cli import main as train_main


@pytest.fixture(scope="module")
def w4_student(weights_dir, cifar_train_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "w4"
    code = train_main([
        "quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
        "--source", f"real:{cifar_train_dir}", "--calib-images", "128", "--w-bits", "4", "--a-bits", "4",
        "--method", "calibrate", "--out", str(out), "--workers", "0", "--no-progress",
    ])
    assert code == 0
    return out


def test_export_then_evaluate_in_onnxruntime(w4_student, cifar_test_dir, tmp_path, capsys):
    onnx_file = tmp_path / "w4.onnx"
    assert train_main(["export", "--checkpoint", str(w4_student), "--out", str(onnx_file)]) == 0
    printed = capsys.readouterr().out
    assert "integer kernels: 20 (1 QGemm, 19 QLinearConv)" in printed and "in float" not in printed

    result_file = tmp_path / "onnx.json"
    code = eval_main(["--onnx", str(onnx_file), "--checkpoint", str(w4_student), "--data", str(cifar_test_dir),
                      "--limit", "300", "--json", str(result_file), "--no-progress", "--workers", "0"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(result_file.read_text())
    assert result["num_images"] == 300
    assert "teacher_top1" not in result and "drop" not in result  # the reference here is the student
    assert result["agreement"] >= 99.0 and abs(result["top1_minus_student"]) <= 0.4
    assert "broken" not in result and "output_kl" not in result  # named as against the student
    assert result["broken_vs_student"] - result["fixed_vs_student"] == pytest.approx(-result["top1_minus_student"])
    assert 0 <= result["output_kl_vs_student"] < 0.05
    assert 40 <= result["top1"] <= 90  # a W4A4 ResNet-20 calibrated on 128 images, on the JPEG test images

    # without a student: top-1 alone, from the input spec the file records
    assert eval_main(["--onnx", str(onnx_file), "--data", str(cifar_test_dir), "--limit", "100", "--no-progress",
                      "--workers", "0"]) == 0

    # an existing file is kept unless --overwrite
    before = onnx_file.read_bytes()
    assert train_main(["export", "--checkpoint", str(w4_student), "--out", str(onnx_file)]) == 2
    assert "--overwrite" in capsys.readouterr().err and onnx_file.read_bytes() == before


def test_bad_export_requests_are_refused(w4_student, weights_dir, cifar_train_dir, tmp_path, capsys):
    assert train_main(["export", "--checkpoint", str(w4_student), "--out", str(tmp_path / "m.txt")]) == 2
    assert "ending in .onnx" in capsys.readouterr().err
    assert train_main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a saved student" in capsys.readouterr().err
    paper = tmp_path / "paper"
    assert train_main([
        "quantize", "--model", "cifar10_resnet20", "--checkpoint", str(weights_dir / "resnet20-12fca82f.th"),
        "--source", f"real:{cifar_train_dir}", "--calib-images", "32", "--batch-size", "32", "--protocol", "paper",
        "--method", "calibrate", "--out", str(paper), "--workers", "0", "--no-progress",
    ]) == 0
    capsys.readouterr()
    assert train_main(["export", "--checkpoint", str(paper), "--out", str(tmp_path / "p.onnx")]) == 2
    assert "BatchNorm is not folded" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists() and not (tmp_path / "p.onnx.partial").exists()
    assert eval_main(["--onnx", str(tmp_path / "missing.onnx"), "--data", str(tmp_path)]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert eval_main(["--onnx", str(tmp_path / "m.onnx"), "--generator", str(tmp_path), "--model",
                      "cifar10_resnet20"]) == 2
    assert "not both" in capsys.readouterr().err
    # int4-packed layers run in float: refused without --allow-float, and nothing is left behind
    packed = tmp_path / "packed.onnx"
    assert train_main(["export", "--checkpoint", str(w4_student), "--out", str(packed), "--pack-int4"]) == 2
    assert "leave out --pack-int4" in capsys.readouterr().err
    assert not packed.exists() and not packed.with_name("packed.onnx.partial").exists()
    assert train_main(["export", "--checkpoint", str(w4_student), "--out", str(packed), "--pack-int4",
                       "--allow-float"]) == 0
    assert "in float: 18" in capsys.readouterr().out and packed.is_file()


def test_unloadable_files_and_old_students_are_refused_with_the_fix(w4_student, cifar_test_dir, tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    assert eval_main(["--onnx", str(garbage), "--data", str(cifar_test_dir), "--limit", "10"]) == 2
    assert "onnxruntime cannot load" in capsys.readouterr().err
    # a deploy student saved before quantize_ops existed: float additions and biases, no field in its JSON
    teacher, _ = create_teacher("cifar10_resnet20", pretrained=False)
    config = QuantConfig(w_bits=4, a_bits=4, quantize_ops=False)
    student = calibrate(quantize_model(teacher, config), [torch.randn(4, 3, 32, 32)])
    old = save_student(student, tmp_path / "old", config=config, teacher="cifar10_resnet20")
    meta = json.loads((old / "student.json").read_text())
    del meta["quant_config"]["quantize_ops"], meta["quant_config"]["ops_bits"]
    (old / "student.json").write_text(json.dumps(meta))
    assert train_main(["export", "--checkpoint", str(old), "--out", str(tmp_path / "old.onnx")]) == 2
    assert "made before the deploy protocol quantized additions" in capsys.readouterr().err
