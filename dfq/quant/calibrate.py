"""Calibration: run data through a quantized model while its input quantizers observe ranges."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from dfq.modes import restored
from dfq.quant.quantizer import TensorQuantizer


def quantizers(model: nn.Module) -> Iterator[tuple[str, TensorQuantizer]]:
    """Every TensorQuantizer in `model`, with its qualified name."""
    for name, module in model.named_modules():
        if isinstance(module, TensorQuantizer):
            yield name, module


def _input_quantizers(model: nn.Module) -> dict[str, TensorQuantizer]:
    return {name: q for name, q in quantizers(model) if name.endswith("input_quantizer")}


@contextlib.contextmanager
def calibration_mode(model: nn.Module, *, load_ranges: bool = True):
    """Within the block the model is in eval mode and its input quantizers pass data through while their
    observers collect ranges; on a clean exit the observed ranges are merged across processes where several
    calibrate together (`dfq.distributed`) and loaded into the quantizers. On
    any exit the model's train/eval modes and the quantizers' flags are restored and observers reset.

    Raises:
        ValueError: the model has no input quantizers (nothing to calibrate).
    """
    targets = _input_quantizers(model)
    if not targets:
        raise ValueError("the model has no input quantizers to calibrate; was it built with dfq.quantize_model?")
    flags = [(q, q.calibrating, q.enabled) for q in targets.values()]
    try:
        with restored(model):
            model.eval()
            for q in targets.values():
                q.observer.reset()
                q.calibrating, q.enabled = True, True
            yield model
            if load_ranges:
                for q in {id(q): q for q in targets.values()}.values():  # a shared quantizer merges once
                    q.observer.sync()  # every process's data (dfq.distributed); nothing in one process
                for name, q in targets.items():
                    q.calibrating = False
                    try:
                        q.load_observed_range()
                    except RuntimeError as exc:
                        raise ValueError(f"{name} saw no data during calibration; is that layer used in forward?") from exc
    finally:
        for q, calibrating, enabled in flags:
            q.calibrating, q.enabled = calibrating, enabled
            q.observer.reset()


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _images(batch) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate(
    model: nn.Module,
    data: Iterable | Callable[[nn.Module], None],
    *,
    num_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """Set the input ranges of a quantized model from data.

    Args:
        model: a model from `quantize_model`.
        data: an iterable of batches (tensors, or (images, labels) pairs, moved to the model's device),
            or a forward-loop callable `fn(model)` that runs whatever forward passes it likes.
        num_batches: stop after this many batches of an iterable (required for endless streams).

    Returns:
        The model, calibrated, in the train/eval mode it had.

    Raises:
        ValueError: no batch was seen, or the model has nothing to calibrate.
    """
    device = _device_of(model)
    seen = 0
    with calibration_mode(model):
        if callable(data) and not isinstance(data, Iterable):
            data(model)
            seen = 1
        else:
            # islice stops before pulling a batch more than asked: on a refined stream each batch costs seconds
            batches = itertools.islice(data, num_batches) if num_batches is not None else data
            for batch in tqdm(batches, total=num_batches, desc="calibrate", disable=not progress, leave=False):
                images = _images(batch).to(device)
                if not torch.isfinite(images).all():
                    raise ValueError(f"calibration batch {seen} holds non-finite values (NaN or inf); "
                                     "check the data source")
                model(images)
                seen += 1
        if seen == 0:
            raise ValueError("calibration saw no batches: the data was empty")
    return model
