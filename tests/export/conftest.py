"""The export tests need onnx and onnxruntime (the `export` extra): they skip where it is not installed, and fail
under CI=true, which installs it."""

import importlib.util
import os

import pytest


def _require_export_extra() -> None:
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed: pip install -e '.[export]'"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI installs the export extra, so its absence is an error)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _export_extra():
    _require_export_extra()
