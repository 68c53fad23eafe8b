"""Fake quantization: primitives -> observers -> TensorQuantizer -> Quant layers -> whole-model transforms."""

from dfq.quant.calibrate import calibrate, calibration_mode, quantizers
from dfq.quant.config import PROTOCOLS, LayerOverride, QuantConfig
from dfq.quant.convert import dequantize_model, layer_bits, quantize_model
from dfq.quant.fold import fold_batchnorm, fold_conv_bn
from dfq.quant.modules import QUANT_MODULES, LayerQuantSpec, QuantConv2d, QuantLinear
from dfq.quant.observers import OBSERVERS, QuantSpec, create_observer
from dfq.quant.quantizer import TensorQuantizer
from dfq.quant.serialization import is_student_dir, load_student, save_student
from dfq.quant.summary import summarize

__all__ = [
    "OBSERVERS", "PROTOCOLS", "QUANT_MODULES", "LayerOverride", "LayerQuantSpec", "QuantConfig", "QuantConv2d",
    "QuantLinear", "QuantSpec", "TensorQuantizer", "calibrate", "calibration_mode", "create_observer",
    "dequantize_model", "fold_batchnorm", "fold_conv_bn", "is_student_dir", "layer_bits", "load_student",
    "quantize_model", "quantizers", "save_student", "summarize",
]
