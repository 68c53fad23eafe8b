"""gznq's quantization side: teachers, real-data evaluation, fake quantization and calibration."""

__version__ = "0.1.0"
