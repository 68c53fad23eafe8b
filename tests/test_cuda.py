"""The pipeline on a CUDA device: each stage runs there and agrees with the CPU.

Skipped where no CUDA device is present (CI and the development machines); run on a lent GPU with
`python -m pytest -q tests/test_cuda.py`.
"""

from __future__ import annotations

import json

import pytest
import torch

from gznq.cli.eval_cli import main as eval_main
from gznq.cli.train_cli import main as train_main
from dfq.losses import kd_loss
from gznq.distill import Distiller, DistillConfig
from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, quantize_model
from dfq.quant.reconstruct import ReconstructConfig, reconstruct
from dfq.quant.serialization import load_student
from generators.network import GeneratorConfig
from generators.stream import SyntheticStream
from generators.trainer import GeneratorTrainConfig, train_generator
from tests.generators.helpers import TINY_SPEC, tiny_teacher
from tests.quant.helpers import randomize_bn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
GEN = GeneratorConfig(num_classes=4, image_size=8, base_size=4, width=16, latent_dim=8, embed_dim=8)


def _scales(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k.endswith(".scale")}


@pytest.fixture
def full_precision_matmul(monkeypatch):
    """No TF32 in CUDA convolutions and matmuls, so that GPU and CPU results are comparable."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("protocol", ["paper", "deploy"])
def test_calibration_on_cuda_matches_the_cpu(protocol, full_precision_matmul):
    teacher, _ = create_teacher("cifar10_resnet20", pretrained=False)
    randomize_bn(teacher)
    images = torch.randn(128, 3, 32, 32)
    config = QuantConfig(w_bits=4, a_bits=4, protocol=protocol, weight_observer="mse", act_observer="mse")
    students = {}
    for device in ("cpu", "cuda"):
        student = quantize_model(teacher.to(device), config)
        calibrate(student, [images[:64], images[64:]])
        students[device] = student
    cpu, gpu = _scales(students["cpu"]), _scales(students["cuda"])
    assert cpu.keys() == gpu.keys() and len(cpu) > 20
    for name in cpu:  # the MSE search may pick a neighbouring clipping ratio (1% apart) where two nearly tie
        torch.testing.assert_close(gpu[name], cpu[name], rtol=0.1, atol=1e-6, msg=name)
    with torch.no_grad():
        a = students["cpu"](images)
        b = students["cuda"](images.to(CUDA)).cpu()
    assert b.device.type == "cpu" and (a.argmax(1) == b.argmax(1)).float().mean() > 0.9
    assert (a - b).abs().mean() < 0.1 * a.std()


def test_reconstruction_on_cuda_lowers_the_output_error():
    torch.manual_seed(0)
    teacher, _ = create_teacher("cifar10_resnet20", pretrained=False)
    teacher = randomize_bn(teacher).to(CUDA)
    images = [torch.randn(32, 3, 32, 32, device=CUDA) for _ in range(2)]
    student = quantize_model(teacher, QuantConfig(w_bits=3, a_bits=3, protocol="paper"))
    calibrate(student, images)
    x = torch.cat(images)

    def error():
        with torch.no_grad():
            return torch.nn.functional.mse_loss(student(x), teacher(x)).item()

    before = error()
    records = reconstruct(student, teacher, images, ReconstructConfig(iterations=40), progress=False)
    assert records and error() < before
    assert all(p.device.type == "cuda" for p in student.parameters())


def test_generator_training_stream_and_distillation_on_cuda(tmp_path):
    torch.manual_seed(0)
    teacher = tiny_teacher().to(CUDA)
    config = GeneratorTrainConfig(steps=6, batch_size=16, lr=5e-3, warmup_steps=2, log_every=1, save_every=3,
                                  grid_every=1000)
    generator = train_generator(teacher, TINY_SPEC, tmp_path / "g", teacher_name="tiny", gen_config=GEN,
                                config=config, progress=False)
    assert next(generator.parameters()).device.type == "cuda"
    batches = [list(SyntheticStream(generator, TINY_SPEC.mean, TINY_SPEC.std, batch_size=8, seed=3, num_batches=2))
               for _ in range(2)]
    assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in batches[0])
    for (xa, ya), (xb, yb) in zip(*batches):
        assert torch.equal(ya, yb) and torch.allclose(xa, xb)

    student = quantize_model(teacher, QuantConfig(w_bits=3, a_bits=3, protocol="paper"))
    calibrate(student, [x for x, _ in batches[0]])
    fixed = torch.cat([x for x, _ in batches[1]])

    def kl():
        student.eval()
        with torch.no_grad():
            return kd_loss(student(fixed), teacher(fixed), 1.0).item()

    before = kl()
    d = Distiller(student, teacher, TINY_SPEC,
                  DistillConfig(steps=30, batch_size=16, lr=1e-3, scale_lr=1e-3, seed=0, generator_every=2),
                  generator=generator)
    for _ in range(30):
        d.step()
    assert kl() < before
    assert next(generator.parameters()).device.type == "cuda"  # the generator steps kept it there


def test_cli_pipeline_on_cuda_saves_a_student_that_loads_on_the_cpu(weights_dir, cifar_test_dir, tmp_path, capsys,
                                                                    full_precision_matmul):
    ckpt = str(weights_dir / "resnet20-12fca82f.th")
    gen = tmp_path / "gen"
    assert train_main(["generator", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--steps", "4",
                       "--batch-size", "32", "--out", str(gen), "--no-progress", "--device", "cuda"]) == 0
    out = tmp_path / "student"
    code = train_main(["quantize", "--model", "cifar10_resnet20", "--checkpoint", ckpt, "--source", f"generator:{gen}",
                       "--calib-images", "64", "--batch-size", "32", "--w-bits", "4", "--a-bits", "4",
                       "--protocol", "paper", "--method", "reconstruct,distill", "--recon-iters", "5",
                       "--refine-steps", "2", "--distill-steps", "3", "--distill-batch-size", "16",
                       "--eval-data", str(cifar_test_dir), "--eval-limit", "100", "--workers", "0",
                       "--device", "cuda", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "calibrate,reconstruct,distill" and report["num_images"] == 100
    assert report["agreement"] > 30  # 4-bit, a 4-step generator: far from the teacher, far above chance
    on_cpu, _ = load_student(out, device="cpu")
    on_gpu, _ = load_student(out, device="cuda")
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        a, b = on_cpu(x), on_gpu(x.to(CUDA)).cpu()
    # the same weights and grids; an activation within float error of a rounding boundary may round apart
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.9
    assert (a - b).abs().mean() < 0.05 * a.std()
    js = tmp_path / "e.json"
    assert eval_main(["--checkpoint", str(out), "--data", str(cifar_test_dir), "--limit", "100", "--workers", "0",
                      "--device", "cuda", "--no-progress", "--json", str(js)]) == 0
    evaluation = json.loads(js.read_text())
    # the same student and images on the same device; at most one of 100 images may round apart
    assert abs(evaluation["top1"] - report["top1"]) <= 1.0 and abs(evaluation["agreement"] - report["agreement"]) <= 1.0
