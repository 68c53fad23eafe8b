"""Refinement through the generator: each batch's latents and a copy of the generator's weights are optimized
against the teacher's BatchNorm statistics, instead of the batch's pixels (`generators.refine`).

Pixel refinement uses the generator only for its starting images and then moves every pixel on its own. Here the
images stay the generator's outputs throughout: a batch's latents z and a private copy of the trained generator
(its batch statistics on, as in training) take the Adam steps, so the generator's structure shapes every image
the student is calibrated on (Genie, Jeon et al. 2023, optimizes latents and a generator per batch; here the
generator starts trained rather than from scratch). The trained generator itself is never changed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from dfq.models.spec import InputSpec
from dfq.modes import frozen
from generators.augment import random_jitter, scaled_shift
from generators.bn_stats import BN_LOSSES, BNStatsRecorder, at_least_float32
from generators.network import ConditionalGenerator, normalize
from generators.refine import PRECISIONS, RefineConfig, RefinedBatches, _steps, check_precision
from generators.stream import SyntheticStream, batch_seed

JITTER_SALT = 0x717E5  # batch i's jitter: its own seed, apart from its latents' and pixel noise's


def refine_through_generator(
    teacher: nn.Module,
    spec: InputSpec,
    generator: ConditionalGenerator,
    latents: torch.Tensor,
    labels: torch.Tensor,
    config: RefineConfig,
    *,
    noise: torch.Generator | None = None,
    jitter: torch.Generator | None = None,
) -> torch.Tensor:
    """Images in [0, 1] of one batch made by optimizing `latents` (B, latent_dim) and a copy of `generator`
    for `config.steps` Adam steps (rates `config.lr` for the latents, `config.weight_lr` for the weights, both
    cosine-annealed to 0) against the teacher's BN loss of the whole batch (and, with `config.ce_weight`, its
    cross-entropy on `labels`), the images jittered before the teacher as in pixel refinement. `noise` draws the
    generator's pixel noise (on the generator's device), `jitter` the jitter (a CPU generator). 0 steps returns
    the copy's samples for `latents` (its batch statistics on).

    Raises:
        ValueError: a batch of one, or non-finite images.
    """
    if len(latents) < 2:
        raise ValueError("refinement matches a batch's BatchNorm statistics; it needs at least 2 images")
    steps = _steps(config)
    check_precision(config, latents.device)
    copy_ = copy.deepcopy(generator).train()  # batch statistics in its BatchNorm, as in training
    for p in copy_.parameters():
        p.requires_grad_(True)
    z = latents.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([{"params": [z], "lr": config.lr},
                            {"params": list(copy_.parameters()), "lr": config.weight_lr}])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    bn_loss = BN_LOSSES[config.bn_loss]
    dtype = PRECISIONS[config.precision]
    with frozen(teacher), torch.enable_grad():
        for _ in range(steps):
            x = copy_(z, labels, generator=noise)
            jittered = random_jitter(x, max_shift=scaled_shift(config.max_shift, x.shape[-1]), flip=config.flip,
                                     generator=jitter)
            cast = torch.autocast(z.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with BNStatsRecorder(teacher) as rec, cast:
                out = teacher(normalize(jittered, spec.mean, spec.std))
            loss = config.bn_weight * bn_loss(rec.stats)
            if config.ce_weight:
                loss = loss + config.ce_weight * F.cross_entropy(at_least_float32(out), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            images = copy_(z, labels, generator=noise)
    if not torch.isfinite(images).all():
        raise ValueError("refinement through the generator produced non-finite pixels; lower refine.lr or "
                         "refine.weight_lr")
    return images


class GeneratorRefinedBatches:
    """The batches of `stream` (a SyntheticStream) with each batch's draws (latents, labels, pixel noise)
    refined through the generator (`refine_through_generator`): (images, labels), normalized with the teacher's
    mean and std unless `normalized=False`. Batch i depends only on the stream's seed and i."""

    def __init__(self, stream: SyntheticStream, teacher: nn.Module, spec: InputSpec, config: RefineConfig, *,
                 normalized: bool = True) -> None:
        if stream.num_batches is None:
            raise ValueError("refinement through the generator needs a stream of a set number of batches")
        self.stream, self.teacher, self.spec, self.config, self.normalized = stream, teacher, spec, config, normalized

    def __len__(self) -> int:
        return len(self.stream)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.stream
        for index in range(s.start, s.start + s.num_batches):
            z, labels, noise = s.draw(index)
            jitter = torch.Generator().manual_seed(batch_seed(s.seed, index) ^ JITTER_SALT)
            images = refine_through_generator(self.teacher, self.spec, s.generator, z, labels, self.config,
                                              noise=noise, jitter=jitter)
            yield (normalize(images, self.spec.mean, self.spec.std) if self.normalized else images), labels


def refined_stream(stream: SyntheticStream, teacher: nn.Module, spec: InputSpec, config: RefineConfig, *, seed: int,
                   normalized: bool = True):
    """A generator's stream of a set number of batches refined as `config.space` says: its pixels
    (`RefinedBatches`, jitter seeded by `seed`) or through the generator (`GeneratorRefinedBatches`)."""
    if config.space == "generator":
        return GeneratorRefinedBatches(stream, teacher, spec, config, normalized=normalized)
    return RefinedBatches(stream, teacher, spec, config, seed=seed, normalized=normalized)
