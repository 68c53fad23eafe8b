import json

import pytest
import torch

from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, load_student, quantize_model, save_student
from dfq.quant.serialization import META_FILE, WEIGHTS_FILE
from tests.quant.helpers import randomize_bn


@pytest.mark.parametrize("protocol", ["paper", "deploy"])
def test_saved_student_reloads_to_identical_logits(protocol, tmp_path):
    teacher, _ = create_teacher("cifar10_resnet20", pretrained=False)
    randomize_bn(teacher)
    config = QuantConfig(w_bits=4, a_bits=4, protocol=protocol, act_observer="mse")
    student = quantize_model(teacher, config)
    calibrate(student, [torch.randn(32, 3, 32, 32)])
    out = save_student(student, tmp_path / "s", config=config, teacher="cifar10_resnet20", metadata={"method": "calibrate"})
    assert (out / WEIGHTS_FILE).is_file() and (out / META_FILE).is_file()
    assert not list(out.glob("*.tmp"))
    loaded, meta = load_student(out)
    assert meta["teacher"] == "cifar10_resnet20" and meta["metadata"]["method"] == "calibrate"
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(student.eval()(x), loaded(x))


def test_not_a_student_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved student"):
        load_student(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a gznq student"):
        load_student(tmp_path)
