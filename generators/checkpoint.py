"""Generator checkpoints: `generator.safetensors` (weights) + `generator.json` (architecture, teacher,
training record), both written atomically, plus `train_state.pt` (optimizer, schedule, RNG, step) for
resuming. A generator belongs to one teacher: loading it for another is refused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from dfq.io import atomic_write, check_finite, load_tensors, write_json_atomic
from dfq.models.spec import InputSpec
from generators.bn_stats import batchnorm_layers
from generators.network import ConditionalGenerator, GeneratorConfig

FORMAT = "gznq-generator"
FORMAT_VERSION = 1
WEIGHTS_FILE = "generator.safetensors"
META_FILE = "generator.json"
STATE_FILE = "train_state.pt"


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A short hash of the teacher's BatchNorm running statistics: what the generator was trained to match."""
    h = hashlib.sha256()
    for name, bn in batchnorm_layers(teacher):
        h.update(name.encode())
        for t in (bn.running_mean, bn.running_var):
            h.update(t.detach().float().cpu().numpy().round(6).tobytes())
    return h.hexdigest()[:16]


def save_generator(generator: ConditionalGenerator, out_dir: str | os.PathLike, *, teacher: str,
                   fingerprint: str, spec: dict, record: dict | None = None) -> Path:
    """Write the generator's weights and metadata; the JSON goes last and marks a complete checkpoint."""
    out = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    check_finite(state, where="the generator")  # a diverged run is refused, not saved
    atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))
    write_json_atomic(out / META_FILE, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "teacher": teacher, "teacher_fingerprint": fingerprint,
        "input_spec": spec, "generator_config": generator.config.to_dict(), "record": record or {},
    })
    return out


def read_generator_meta(path: str | os.PathLike) -> dict:
    """The JSON half of a generator checkpoint.

    Raises:
        FileNotFoundError: no generator.json (with a hint when the path is a student or does not exist).
        ValueError: not a gznq generator.
    """
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        hint = "the directory does not exist" if not path.exists() else f"{META_FILE} is missing"
        raise FileNotFoundError(f"{str(path)!r} is not a generator checkpoint: {hint} (train one with `train.py generator`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta_path} is not readable JSON ({exc}); it may be damaged") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a gznq generator (format {meta.get('format')!r})")
    return meta


def check_teacher(meta: dict, *, teacher_name: str | None = None, teacher: nn.Module | None = None, path="") -> None:
    """Refuse a generator trained for a different teacher (by name, and by BN statistics when given)."""
    if teacher_name is not None and meta["teacher"] != teacher_name:
        raise ValueError(
            f"generator {str(path)!r} was trained for teacher {meta['teacher']!r}, not {teacher_name!r}: its images "
            "match that teacher's BatchNorm statistics. Train a generator for this teacher with `train.py generator`."
        )
    if teacher is not None and meta.get("teacher_fingerprint") != teacher_fingerprint(teacher):
        raise ValueError(
            f"generator {str(path)!r} was trained for {meta['teacher']!r} with different weights (the BatchNorm "
            "statistics differ); pass the same teacher checkpoint it was trained with, or train a new generator."
        )


SPEC_FIELDS = ("image_size", "channels", "mean", "std", "num_classes")


def check_generator_spec(meta: dict, spec: InputSpec, *, path: str | os.PathLike = "") -> None:
    """Refuse a generator trained for another input (size, channels, normalization, classes) than `spec`'s: its
    images would be made for a teacher fed differently."""
    recorded = meta.get("input_spec") or {}
    given = dataclasses.asdict(spec)
    differ = [f"{k} {recorded.get(k)} (generator) vs {given[k]}" for k in SPEC_FIELDS
              if k in recorded and _plain(recorded[k]) != _plain(given[k])]
    if differ:
        raise ValueError(f"generator {str(path)!r} was trained for another input than the teacher's: "
                         f"{'; '.join(differ)}. Give the teacher the spec the generator was trained with "
                         "(--mean/--std/--image-size/--num-classes), or train a generator for this one.")


def _plain(value):
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def load_generator(path: str | os.PathLike, *, teacher_name: str | None = None, teacher: nn.Module | None = None,
                   device="cpu") -> tuple[ConditionalGenerator, dict]:
    """Rebuild a generator from its checkpoint, in eval mode; see `check_teacher` for the refusals."""
    meta = read_generator_meta(path)
    check_teacher(meta, teacher_name=teacher_name, teacher=teacher, path=path)
    generator = ConditionalGenerator(GeneratorConfig(**meta["generator_config"]))
    generator.load_state_dict(load_tensors(Path(path) / WEIGHTS_FILE, device=str(device)))
    return generator.to(device).eval(), meta


def save_train_state(out_dir: str | os.PathLike, state: dict) -> None:
    atomic_write(Path(out_dir) / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_train_state(out_dir: str | os.PathLike) -> dict:
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume in {str(out_dir)!r}: {STATE_FILE} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc}); it may be damaged") from None
