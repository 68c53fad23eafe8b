"""Saving and loading quantized students: `student.safetensors` (all tensors) plus `student.json`
(format, teacher name, QuantConfig, free-form metadata), both written atomically."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from dfq.io import atomic_write, check_finite, load_tensors, write_json_atomic
from dfq.models.spec import InputSpec, SpecOverrides
from dfq.quant.config import QuantConfig
from dfq.quant.convert import quantize_model

FORMAT = "gznq-student"
FORMAT_VERSION = 1
WEIGHTS_FILE = "student.safetensors"
META_FILE = "student.json"
# TensorQuantizer's tracking-mode ranges, NaN until their first tracked batch
UNSET_BUFFERS = ("running_min", "running_max")


def is_student_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file()


def save_student(
    model: nn.Module, out_dir: str | os.PathLike, *, config: QuantConfig, teacher: str, metadata: dict | None = None,
    spec: InputSpec | None = None,
) -> Path:
    """Write a quantized student to `out_dir` (created if needed); returns the directory.

    `teacher` is the name `create_teacher` knows the float model by (or, for a model of one's own, any
    label: `load_student` then needs the float model); `spec` the input spec it was quantized for (recorded,
    so that loading rebuilds a teacher with the same input, classes and normalization); `metadata`
    (JSON-serializable) records how the student was made (method, source, teacher checkpoint, ...).
    """
    out = Path(out_dir)
    # a shared quantizer (dfq.quant.graph.tie_shared_inputs) appears under each of its names: safetensors
    # refuses tensors that share memory, so each name gets its own copy
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    check_finite(state, where="the student", unset=UNSET_BUFFERS)  # a diverged run is refused, not saved
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "teacher": teacher,
        "quant_config": config.to_dict(),
        "metadata": metadata or {},
    }
    if spec is not None:
        meta["input_spec"] = dataclasses.asdict(spec)
    write_json_atomic(out / META_FILE, meta)  # written last: its presence marks a complete student
    return out


def read_student_meta(path: str | os.PathLike) -> dict:
    """The JSON half of a saved student.

    Raises:
        FileNotFoundError: no student.json in `path`.
        ValueError: the JSON is not a gznq student.
    """
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is not a saved student: {META_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path} is not readable JSON ({exc}); it may be damaged") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a gznq student (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{meta_path} has format version {meta['format_version']}; this gznq reads up to {FORMAT_VERSION}")
    return meta


def student_input_spec(meta: dict) -> InputSpec:
    """The input spec a student was quantized for: as recorded, or (students saved before it was) its teacher's."""
    recorded = meta.get("input_spec")
    if recorded:
        return InputSpec(**{k: tuple(v) if k in ("mean", "std") else v for k, v in recorded.items()})
    from dfq.models import create_teacher

    return create_teacher(meta["teacher"], pretrained=False).spec


def load_student(path: str | os.PathLike, *, device: str = "cpu", model: nn.Module | None = None
                 ) -> tuple[nn.Module, dict]:
    """Rebuild a saved student: its teacher's architecture (no teacher weights needed; the classes recorded
    with it), quantized with the saved config, then every tensor loaded from the safetensors file. Returns
    (model in eval mode, meta).

    model: the float architecture to rebuild it on (its weights do not matter, it is not changed): needed for a
        student of a model of one's own, which no name rebuilds; by default the teacher is built by name.

    Raises:
        FileNotFoundError / ValueError: not a student directory, an unreadable or non-finite weights file, or
            tensors that do not fit; a student of a model of one's own without `model`.
    """
    from dfq.models import create_teacher, is_known_teacher  # the zoo imports heavy optional packages lazily

    meta = read_student_meta(path)
    config = QuantConfig.from_dict(meta["quant_config"])
    if model is not None:
        skeleton = copy.deepcopy(model)
    elif is_known_teacher(meta["teacher"]):
        overrides = SpecOverrides.from_dict(meta.get("input_spec"))
        skeleton, _ = create_teacher(meta["teacher"], pretrained=False, overrides=overrides)
    else:
        raise ValueError(f"the student at {str(path)!r} was made from a model of your own ({meta['teacher']!r}), "
                         "which no name rebuilds: load it in Python with load_student(path, model=<the float "
                         "model>)")
    model = quantize_model(skeleton, config, inplace=True)
    state = load_tensors(Path(path) / WEIGHTS_FILE, device=device, unset=UNSET_BUFFERS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"student at {str(path)!r} does not fit {meta['teacher']} under its config: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), meta
