"""Export of quantized students: QDQ ONNX (`export_onnx`) and its checks in onnxruntime (`dfq.export.check`).
Needs the `export` extra (onnx, onnxruntime): pip install -e '.[export]' (from the repository root)."""

from dfq.export.onnx_export import ExportError, build_onnx, export_onnx

__all__ = ["ExportError", "build_onnx", "export_onnx"]
