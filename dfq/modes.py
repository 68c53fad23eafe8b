"""Temporary changes to a model's modes, undone on exit: the one save-and-restore pattern every stage uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def restored(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block change `model` freely; on any exit every submodule's train/eval flag and every
    parameter's requires_grad are put back as they were on entry."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode with no parameter requiring grad (gradients still flow through it to its
    input), as a fixed teacher is used; restored on exit (see `restored`)."""
    with restored(model):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
