"""Data-parallel generator training: the processes share one global batch, each makes its rows of it.

Every process draws the whole batch's labels, latents, pixel noise and jitter from the same seeded generator
and computes its rows only (`local_rows`: the pairs the mode-seeking term compares stay together); every
batch statistic is that of the global batch (the teacher's BN statistics through `BNStatsRecorder`'s reducer,
the generator's own BatchNorm through `synced_batchnorm`); the gradients are averaged
(`dfq.distributed.average_gradients`); `gather_rows` puts the global batch back together where a step needs all
of it (distillation's blends pair images of the whole batch).
The step then leaves the weights one process training on the whole batch leaves (up to float summation order).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from dfq import distributed
from generators.bn_stats import SumReducer


def local_rows(batch: int, rank: int, world: int) -> torch.Tensor:
    """The rows of a batch of `batch` images process `rank` of `world` makes: an equal share of each half (row i
    and row i + batch/2 are a pair, made by the same process).

    Raises:
        ValueError: the batch does not split into equal shares of pairs.
    """
    half = batch // 2
    if batch % 2 or half % world:
        raise ValueError(f"a batch of {batch} images does not split into {world} equal shares of pairs; use a batch "
                         f"size divisible by {2 * world}")
    share = half // world
    first = torch.arange(rank * share, (rank + 1) * share)
    return torch.cat([first, first + half])


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """The global batch whose `local_rows` each process holds, in the batch's own row order, on every process
    (detached); `local` itself in one process. Every process must hold an equal share."""
    world = distributed.world_size()
    if world == 1:
        return local
    batch = local.shape[0] * world
    gathered = distributed.all_gather_cat(local)  # rank order: process 0's rows, then process 1's, ...
    order = torch.cat([local_rows(batch, r, world) for r in range(world)]).to(local.device)
    out = torch.empty_like(gathered)
    out[order] = gathered
    return out


def _global_batch_norm(bn: nn.BatchNorm2d, reducer: SumReducer, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm with the mean and variance of every process's batch (biased, as BatchNorm
    normalizes), the running statistics updated with them (unbiased variance, as BatchNorm keeps it)."""
    flat = x.transpose(0, 1).flatten(1)  # (C, local values)
    s1, s2 = flat.sum(1), (flat * flat).sum(1)
    count = torch.tensor(float(flat.shape[1]), device=x.device, dtype=x.dtype)
    s1, s2, count = reducer([s1, s2, count])
    mean = s1 / count
    var = (s2 / count - mean * mean).clamp_min(0)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(m * mean.detach())
            bn.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp_min(1))
    shape = (1, -1, 1, 1)
    out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        out = out * bn.weight.view(shape) + bn.bias.view(shape)
    return out


@contextlib.contextmanager
def synced_batchnorm(module: nn.Module, reducer: SumReducer | None):
    """Within the block, every BatchNorm2d of `module` in training mode normalizes with the statistics of all
    processes' batches (`reducer` adds per-channel sums across them, differentiably); nothing changes with
    `reducer` None. torch's SyncBatchNorm does this on GPUs only."""
    if reducer is None:
        yield module
        return
    patched = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]

    def forward_of(bn):
        def forward(x):
            return _global_batch_norm(bn, reducer, x) if bn.training else F.batch_norm(
                x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        return forward

    for bn in patched:
        bn.forward = forward_of(bn)
    try:
        yield module
    finally:
        for bn in patched:
            del bn.forward
