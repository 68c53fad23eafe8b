"""Finding and loading checkpoint files.

Published weights are looked up, in order, at: an explicit checkpoint path; the directories listed in
the environment variable `GZNQ_WEIGHTS` (os.pathsep-separated); the torch hub cache
(`torch.hub.get_dir()/checkpoints`); a source checkout's development assets
(`<checkout>/../shared/assets/weights`); and finally a download from the file's public URL into the hub
cache. `GZNQ_OFFLINE=1` skips the download.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfq.io import check_finite

WEIGHTS_ENV = "GZNQ_WEIGHTS"
OFFLINE_ENV = "GZNQ_OFFLINE"
# Buffers that older checkpoints lack and whose absence changes nothing at inference.
TOLERATED_MISSING_SUFFIXES = ("num_batches_tracked",)


@dataclass(frozen=True)
class WeightFile:
    """A published checkpoint: its file name (with the sha256 prefix torch hub uses) and URL."""

    filename: str
    url: str

    @property
    def hash_prefix(self) -> str | None:
        stem = Path(self.filename).stem
        return stem.rsplit("-", 1)[1] if "-" in stem else None


def _dev_assets_dir() -> Path:
    return Path(__file__).resolve().parents[2].parent / "shared" / "assets" / "weights"


def weight_search_dirs() -> list[tuple[str, Path]]:
    """The local directories searched for published weights, as (label, path) in search order."""
    dirs: list[tuple[str, Path]] = []
    for entry in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep):
        if entry:
            dirs.append((f"${WEIGHTS_ENV}", Path(entry).expanduser()))
    dirs.append(("torch hub cache", Path(torch.hub.get_dir()) / "checkpoints"))
    dirs.append(("development assets", _dev_assets_dir()))
    return dirs


def _download(weight: WeightFile, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(weight.url, str(dst), hash_prefix=weight.hash_prefix, progress=True)


def resolve_weights(weight: WeightFile | None, *, checkpoint: str | os.PathLike | None = None) -> Path:
    """Return the path of `weight`, looking in the places listed in the module docstring.

    Raises:
        FileNotFoundError: the explicit checkpoint does not exist, or the file is found nowhere and
            cannot be downloaded; the message names the file and every place searched.
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist (given as --checkpoint)")
        return path
    if weight is None:
        raise ValueError("no published weights are known for this model; pass --checkpoint FILE")
    looked = []
    for label, directory in weight_search_dirs():
        candidate = directory / weight.filename
        if candidate.is_file():
            return candidate
        looked.append(f"{label}: {candidate}")
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        reason = f"download skipped because {OFFLINE_ENV} is set"
    else:
        target = Path(torch.hub.get_dir()) / "checkpoints" / weight.filename
        try:
            _download(weight, target)
            return target
        except Exception as exc:  # network errors come in many types; all mean the same here
            reason = f"download from {weight.url} failed ({type(exc).__name__}: {exc})"
    raise FileNotFoundError(
        f"could not find weights file {weight.filename!r}. Looked in:\n  "
        + "\n  ".join(looked)
        + f"\nand {reason}.\nFetch {weight.url} on a machine with internet and pass its path with "
        f"--checkpoint FILE, or put it in a directory named by ${WEIGHTS_ENV}."
    )


# Where training code commonly keeps the weights inside a checkpoint dict, in the order they are looked for.
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "state_dict_ema", "model_ema", "ema")
# Prefixes wrappers add to every key: DataParallel/DDP (`module.`), torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: by its suffix, or by its header (8-byte length, then a JSON object)."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _torch_load(path: Path, trust: bool):
    import argparse

    try:
        # argparse.Namespace (the training options many research repositories save beside the weights) only
        # sets attributes when unpickled, so it is allowed without --trust-checkpoint
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        # torch names the refused object "Unsupported global" (2.4 and later) or "Unsupported class" (earlier);
        # anything else means a damaged file or no pickle at all
        if "unsupported global" not in str(exc).lower() and "unsupported class" not in str(exc).lower():
            raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint (UnpicklingError: {exc})") from None
        raise ValueError(
            f"{str(path)!r} holds pickled Python objects besides its tensors (for example a whole model or the "
            "optimizer's classes), and loading those can run code from the file. If you trust the file, pass "
            "--trust-checkpoint (trust_checkpoint=True in Python); better, re-save just its state dict with "
            "torch.save(sd, path)."
        ) from None
    except Exception as exc:
        raise ValueError(f"{str(path)!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: str | os.PathLike, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file.

    Formats: a safetensors file; a PyTorch file holding a state dict, or a dict holding one under a common key
    (the first of STATE_DICT_KEYS present, e.g. `state_dict`, `model`, `net`, `ema`), or a whole pickled
    model (with `trust` only). `module.` (DataParallel, DDP) and `_orig_mod.` (torch.compile) prefixes
    shared by every key are stripped.

    PyTorch files are unpickled with `weights_only=True`, which runs no code from the file; training options
    saved as an `argparse.Namespace` are allowed. A checkpoint that pickled other Python objects needs full
    unpickling, which can run arbitrary code: it is refused unless `trust` is set.

    Raises:
        ValueError: the file is not a checkpoint, holds no state dict, or needs `trust`.
    """
    path = Path(path)
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type
            raise ValueError(f"{str(path)!r} is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    else:
        obj = _torch_load(path, trust)
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in STATE_DICT_KEYS:
            value = obj.get(key)
            if isinstance(value, nn.Module):
                value = value.state_dict()
            if isinstance(value, Mapping) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
                obj = value
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = f" (its keys: {', '.join(map(str, list(obj)[:10]))})" if isinstance(obj, Mapping) else ""
        raise ValueError(f"{str(path)!r} holds no state dict of tensors{keys}; looked at the top level and under "
                         f"{', '.join(STATE_DICT_KEYS)}. Save the weights with torch.save(model.state_dict(), path).")
    return _strip_wrapper_prefixes(dict(obj))


def _align_prefix(state: Mapping[str, torch.Tensor], expected: Mapping) -> Mapping[str, torch.Tensor]:
    """Strip one leading name that every key carries (`model.`, `net.`, as training frameworks wrap models)
    when the keys do not fit as they are and do without it."""
    if not state or any(k in expected for k in state):
        return state
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) != 1 or not all("." in k for k in state):
        return state
    stripped = {k.split(".", 1)[1]: v for k, v in state.items()}
    return stripped if any(k in expected for k in stripped) else state


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load `state_dict` into `model`, tolerating only missing `num_batches_tracked` buffers.

    Raises:
        ValueError: any other key is missing or unexpected, or a tensor has the wrong shape; the message
            lists the offending keys and names `source`.
    """
    expected = model.state_dict()
    state_dict = _align_prefix(state_dict, expected)
    missing = [k for k in expected if k not in state_dict and not k.endswith(TOLERATED_MISSING_SUFFIXES)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if mismatched:
        problems.append(f"shape mismatches: {mismatched[:8]} (where only the classifier differs, give the "
                        "number of classes the weights were trained with: --num-classes N)")
    if problems:
        raise ValueError(
            f"checkpoint {source} does not fit {type(model).__name__}: " + "; ".join(problems)
            + ". Is it the checkpoint of a different model?"
        )
    check_finite(state_dict, where=f"checkpoint {source}")
    model.load_state_dict(state_dict, strict=False)
