"""Reductions across processes, over torch.distributed's default process group.

`accelerate launch` (or torchrun) starts the processes and sets up the group (gloo on CPU, NCCL on GPU); the
pipeline's stages call these functions, which are the identity in a single process (no group initialized), so
library code runs unchanged either way:

- calibration: observers merge their ranges (`all_reduce` MIN / MAX) or their samples (`all_gather_cat`) before
  the ranges are loaded, so every process ends with the ranges of all processes' images;
- evaluation: each process evaluates its shard (`shard_indices`) and the counts are summed;
- training (generator, reconstruction): gradients averaged (`average_gradients`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def is_distributed() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (nothing in one process)."""
    if is_distributed():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of `tensor` over every process ("sum", "min" or "max"); `tensor` itself is unchanged."""
    if op not in _OPS:
        raise ValueError(f"unknown reduction {op!r}; choose from {', '.join(_OPS)}")
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS[op]))
    return out


def _collective_device() -> torch.device:
    """Where a small tensor must live for the group's backend (NCCL reduces GPU tensors only)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_true(flag: bool) -> bool:
    """Whether `flag` holds in every process (so that all of them raise, or none, instead of some waiting)."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every process's `tensor` concatenated along `dim`, in rank order; their sizes along `dim` may differ."""
    if not is_distributed():
        return tensor
    tensor = tensor.detach().contiguous()
    size = torch.tensor([tensor.shape[dim]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    pad = list(tensor.shape)
    pad[dim] = longest - tensor.shape[dim]
    padded = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim) if pad[dim] else tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded)
    return torch.cat([g.narrow(dim, 0, int(s.item())) for g, s in zip(gathered, sizes)], dim=dim)


def shard_indices(indices: list[int]) -> list[int]:
    """This process's share of `indices` (every world_size-th, from its rank): disjoint shards that together
    hold each index once, so that summed counts equal one process's over all of them."""
    return list(indices[rank()::world_size()])


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Every parameter's gradient averaged over the processes (what data-parallel training applies), in one
    all-reduce of all of them; nothing in one process."""
    world = world_size()
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]), "sum") / world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
