"""BatchNorm statistics of a batch against the teacher's stored running statistics.

`BNStatsRecorder` hooks the input of every BatchNorm layer and records the batch's per-channel mean and
variance; `bn_kl_loss` (GZNQ: the statistics as Gaussians) and `bn_l2_loss` (GDFQ: squared distance of
mean and variance) compare them with the running ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Under data-parallel training the recorder is given a function that sums a list of tensors across ranks
# and returns the sums (see `distributed_sum_reducer`), so that every rank computes the loss from the global
# batch's statistics rather than its own shard's.
SumReducer = Callable[[list[torch.Tensor]], list[torch.Tensor]]


def distributed_sum_reducer() -> SumReducer:
    """A SumReducer over the default torch.distributed process group, differentiable (gradients of the
    global statistics flow back to every rank's images)."""
    from torch.distributed.nn.functional import all_reduce

    def reduce(tensors):
        with warnings.catch_warnings():  # torch 2.9+ points to a private replacement; this one stays supported
            warnings.simplefilter("ignore", FutureWarning)
            return [all_reduce(t) for t in tensors]

    return reduce


@dataclass
class BatchStats:
    """One BN layer's view of a batch: per-channel batch mean/variance and the stored running ones."""

    name: str
    mean: torch.Tensor  # (C,)
    var: torch.Tensor  # (C,), biased (population) variance of the batch
    running_mean: torch.Tensor
    running_var: torch.Tensor
    # per image, on this process only: sums of the values and of their squares over positions, (B, C), and
    # the number of positions (H * W); what the per-class view (`class_bn_kl_loss`) is made of
    image_sums: torch.Tensor | None = None
    image_sq_sums: torch.Tensor | None = None
    positions: int = 1


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 if it is in a 16-bit type (as autocast leaves activations); float32 and float64 as they are
    (a no-op, no copy)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def batchnorm_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The model's BatchNorm layers that keep running statistics, in module order."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None and m.running_var is not None
    ]


def _moments(s1: torch.Tensor, s2: torch.Tensor, count: torch.Tensor,
             reduce_sums: SumReducer | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance from the sums of values and of their squares over `count` values,
    the sums of every process added first when `reduce_sums` is given."""
    if reduce_sums is not None:
        s1, s2, count = reduce_sums([s1, s2, count])
    mean = s1 / count
    return mean, (s2 / count - mean * mean).clamp_min(0)


class BNStatsRecorder:
    """Context manager: while active, every forward pass through `model` records, for each BatchNorm layer,
    the per-channel mean and variance of that layer's input. Hooks are removed on exit, also on error.

        with BNStatsRecorder(teacher) as rec:
            teacher(x)
            loss = bn_kl_loss(rec.stats)

    Args:
        model: a network with BatchNorm layers.
        reduce_sums: optional SumReducer applied to the per-channel sums and counts before the moments
            are formed (the data-parallel hook; see SumReducer).

    Raises:
        ValueError: the model has no BatchNorm layers with running statistics.
    """

    def __init__(self, model: nn.Module, *, reduce_sums: SumReducer | None = None) -> None:
        self.layers = batchnorm_layers(model)
        if not self.layers:
            raise ValueError(
                f"{type(model).__name__} has no BatchNorm layers with running statistics; the BN-statistics "
                "losses need them"
            )
        self.reduce_sums = reduce_sums
        self.stats: list[BatchStats] = []
        self._handles: list = []

    def _hook(self, name: str, bn: _BatchNorm):
        def record(module, inputs):
            x = inputs[0]
            # Per-channel sums, reducing the contiguous trailing dims first (faster than one var_mean
            # over dims (0, 2, 3) on CPU); sums are also what a data-parallel all-reduce needs.
            flat = x.flatten(2) if x.dim() > 2 else x.unsqueeze(2)  # (B, C, L)
            flat = at_least_float32(flat)  # sums in float32 also under autocast to a 16-bit type
            image_s1, image_s2 = flat.sum(dim=2), (flat * flat).sum(dim=2)
            s1, s2 = image_s1.sum(dim=0), image_s2.sum(dim=0)
            count = torch.tensor(float(flat.shape[0] * flat.shape[2]), device=x.device)
            mean, var = _moments(s1, s2, count, self.reduce_sums)
            self.stats.append(BatchStats(name, mean, var, bn.running_mean, bn.running_var, image_s1, image_s2,
                                         flat.shape[2]))

        return record

    def clear(self) -> None:
        self.stats = []

    def __enter__(self) -> "BNStatsRecorder":
        self.clear()
        try:
            for name, bn in self.layers:
                self._handles.append(bn.register_forward_pre_hook(self._hook(name, bn)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _weights(stats: Sequence[BatchStats], layer_weights: Sequence[float] | None) -> list[float]:
    if layer_weights is None:
        return [1.0] * len(stats)
    if len(layer_weights) != len(stats):
        raise ValueError(f"{len(layer_weights)} layer weights for {len(stats)} BatchNorm layers")
    return list(layer_weights)


def gaussian_kl(mean: torch.Tensor, var: torch.Tensor, ref_mean: torch.Tensor, ref_var: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel KL( N(mean, var) || N(ref_mean, ref_var) )."""
    var, ref_var = var + eps, ref_var + eps
    return 0.5 * (torch.log(ref_var / var) + (var + (mean - ref_mean) ** 2) / ref_var - 1)


def bn_kl_loss(stats: Sequence[BatchStats], layer_weights: Sequence[float] | None = None) -> torch.Tensor:
    """GZNQ's loss: the mean over layers (weighted) of the mean over channels of
    KL( N(batch mean, batch var) || N(running mean, running var) ). Zero when the statistics agree."""
    if not stats:
        raise ValueError("no BatchNorm statistics were recorded; run a forward pass inside the recorder")
    w = _weights(stats, layer_weights)
    total = sum(wi * gaussian_kl(s.mean, s.var, s.running_mean, s.running_var).mean() for wi, s in zip(w, stats))
    return total / len(stats)


def bn_l2_loss(stats: Sequence[BatchStats], layer_weights: Sequence[float] | None = None) -> torch.Tensor:
    """GDFQ's loss: the mean over layers (weighted) of mean-squared differences of the per-channel mean
    plus those of the per-channel variance."""
    if not stats:
        raise ValueError("no BatchNorm statistics were recorded; run a forward pass inside the recorder")
    w = _weights(stats, layer_weights)
    total = sum(
        wi * ((s.mean - s.running_mean).pow(2).mean() + (s.var - s.running_var).pow(2).mean())
        for wi, s in zip(w, stats)
    )
    return total / len(stats)


BN_LOSSES = {"kl": bn_kl_loss, "l2": bn_l2_loss}


def input_stats_kl(images: torch.Tensor, *, reduce_sums: SumReducer | None = None) -> torch.Tensor:
    """The input normalization read as the data's first BatchNorm: a teacher's input mean and std are its
    training data's per-channel statistics, so normalized images should have per-channel mean 0 and variance 1.
    Returns the mean over channels of KL( N(batch mean, batch var) || N(0, 1) ) of the normalized `images`
    (B, C, H, W); with `reduce_sums` (data parallelism) the sums of every process are added first."""
    flat = images.transpose(0, 1).flatten(1)  # (C, B * H * W)
    s1, s2 = flat.sum(1), (flat * flat).sum(1)
    count = torch.tensor(float(flat.shape[1]), device=images.device, dtype=images.dtype)
    mean, var = _moments(s1, s2, count, reduce_sums)
    return gaussian_kl(mean, var, torch.zeros_like(mean), torch.ones_like(var)).mean()


def class_bn_kl_loss(stats: Sequence[BatchStats], labels: torch.Tensor, min_count: int = 2, *,
                     num_classes: int | None = None, reduce_sums: SumReducer | None = None) -> torch.Tensor:
    """Per-class view of the BN statistics: for each layer's recorded statistics, the images of each class
    alone (at least `min_count` of them) must have the layer's running mean and variance, by the same
    Gaussian KL as `bn_kl_loss`, averaged over channels, classes and layers. Meant for the first layers
    (`stats[:k]`), whose statistics (edges, colours) hardly depend on the class: a class whose images all look
    alike has a small variance there, which the whole-batch statistics hide as long as the classes differ
    from each other. Built from the per-image sums the recorder keeps; with `reduce_sums` (data parallelism:
    the same reducer as the recorder's) the per-class sums and counts of every process are added first, so
    that each class is judged on all its images.

    Args:
        stats: recorded by `BNStatsRecorder` for a batch.
        labels: (B,) class of each image of that batch.
        num_classes: classes to sum over (default: the largest label + 1; give it under data parallelism, where
            a process may not see the largest label).
    """
    if not stats:
        raise ValueError("no BatchNorm statistics were recorded; run a forward pass inside the recorder")
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=k).to(stats[0].image_sums.dtype)
    if reduce_sums is not None:
        (counts,) = reduce_sums([counts])
    keep = counts >= min_count
    if not keep.any():
        raise ValueError(f"no class has {min_count} images in the batch; the per-class BN loss needs them")
    total = stats[0].mean.new_zeros(())
    for st in stats:
        c = st.image_sums.shape[1]
        s1 = st.image_sums.new_zeros(k, c).index_add(0, labels, st.image_sums)
        s2 = st.image_sums.new_zeros(k, c).index_add(0, labels, st.image_sq_sums)
        if reduce_sums is not None:
            s1, s2 = reduce_sums([s1, s2])
        n = (counts * st.positions).clamp_min(1)[:, None]
        mean = s1 / n
        var = (s2 / n - mean * mean).clamp_min(0)
        kl = gaussian_kl(mean[keep], var[keep], st.running_mean[None], st.running_var[None])  # (K kept, C)
        total = total + kl.mean()
    return total / len(stats)
