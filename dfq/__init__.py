"""gznq's quantization side: teachers, real-data evaluation, fake quantization and calibration.

    from dfq import create_teacher, QuantConfig, quantize_model, calibrate
    teacher, spec = create_teacher("cifar10_resnet20")
    student = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="paper"))
    calibrate(student, batches, num_batches=8)
"""

__version__ = "0.1.0"

from dfq.evaluate import EvalResult, evaluate
from dfq.models import InputSpec, create_teacher, list_teachers
from dfq.quant import QuantConfig, calibrate, load_student, quantize_model, save_student, summarize

__all__ = [
    "EvalResult", "InputSpec", "QuantConfig", "calibrate", "create_teacher", "evaluate", "list_teachers",
    "load_student", "quantize_model", "save_student", "summarize",
]
