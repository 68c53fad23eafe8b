"""Quantization on a device other than the CPU, checked without a GPU.

PyTorch's lazy-tensor backend ("lazy", executed by TorchScript on the CPU) refuses to mix its tensors with
CPU tensors, as CUDA does, so a quantizer buffer or a random mask left on the CPU fails here as it would on
a GPU (tests/test_cuda.py runs the whole pipeline where a GPU is present). Where the backend is missing
from the installed torch, these tests skip.
"""

from __future__ import annotations

import pytest
import torch

from dfq.quant import QuantConfig, calibrate, quantize_model
from dfq.quant.quantizer import TensorQuantizer
from dfq.quant.observers import QuantSpec
from dfq.quant.reconstruct import ReconstructConfig, reconstruct
from tests.quant.helpers import randomize_bn
from tests.quant.test_reconstruct import TinyRes


@pytest.fixture(scope="module")
def lazy():
    try:
        import torch._lazy
        import torch._lazy.ts_backend
        from torch.optim.optimizer import register_optimizer_step_post_hook
    except ImportError as e:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch's lazy-tensor backend is not available: {e}")
    torch._lazy.ts_backend.init()
    # one lazy graph per optimizer step, instead of one growing over every step
    handle = register_optimizer_step_post_hook(lambda *args: torch._lazy.mark_step())
    yield torch.device("lazy")
    handle.remove()


def test_quantizer_buffers_are_made_on_the_requested_device():
    q = TensorQuantizer(QuantSpec(bits=4, axis=0), num_channels=3, device="meta")
    assert {t.device.type for t in (*q.parameters(), *q.buffers())} == {"meta"}


@pytest.mark.parametrize("protocol", ["paper", "deploy"])
def test_calibrate_and_reconstruct_on_another_device_match_the_cpu(lazy, protocol):
    torch.manual_seed(0)
    teacher = randomize_bn(TinyRes()).eval()
    images = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    config = QuantConfig(w_bits=4, a_bits=4, protocol=protocol, weight_observer="mse", act_observer="mse")
    outputs = {}
    for device in (torch.device("cpu"), lazy):
        teacher_here = TinyRes()
        teacher_here.load_state_dict(teacher.state_dict())
        teacher_here.eval().to(device)
        student = quantize_model(teacher_here, config)
        calibrate(student, [x.to(device) for x in images])
        reconstruct(student, teacher_here, [x.to(device) for x in images],
                    ReconstructConfig(iterations=4, batch_size=8, seed=0), progress=False)
        with torch.no_grad():
            outputs[device.type] = student(images[0].to(device)).cpu()
    torch.testing.assert_close(outputs["lazy"], outputs["cpu"], rtol=1e-3, atol=1e-3)
