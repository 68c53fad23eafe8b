"""Refinement through the generator: each batch's latents and a copy of the generator's weights are optimized
against the teacher's BatchNorm statistics, instead of the batch's pixels (`generators.refine`).

Pixel refinement uses the generator only for its starting images and then moves every pixel on its own. Here the
images stay the generator's outputs throughout: a batch's latents z and a private copy of the trained generator
(its batch statistics on, as in training) take the Adam steps, so the generator's structure shapes every image
the student is calibrated on (Genie, Jeon et al. 2023, optimizes latents and a generator per batch; here the
generator starts trained rather than from scratch). The trained generator itself is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from dfq.models.spec import InputSpec
from dfq.modes import frozen
from generators.network import ConditionalGenerator, normalize
from generators.refine import RefineConfig, RefinedBatches, check_precision, refinement_loss, steps_of
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
    (moved to the latents' device) for `config.steps` Adam steps, rates `config.lr` for the latents and
    `config.weight_lr` for the weights (0: the weights stay as trained and only the latents move), both
    cosine-annealed to 0, against `refinement_loss` (the teacher's BN loss of the whole batch and, with
    `config.ce_weight`, its cross-entropy on `labels`; the images jittered before the teacher as in pixel
    refinement). The copy's BatchNorm uses the batch's statistics, as in training. `noise` draws the generator's
    pixel noise (on the latents' device), afresh at every step and for the images returned; `jitter` the jitter
    (a CPU generator). 0 steps returns the copy's samples for `latents` (batch statistics; the stream's samples use
    the running ones).

    Raises:
        ValueError: a batch of one, a precision the device cannot run (`check_precision`) or non-finite images.
    """
    if len(latents) < 2:
        raise ValueError("refinement matches a batch's BatchNorm statistics; it needs at least 2 images")
    steps = steps_of(config)
    check_precision(config, latents.device)
    copy_ = copy.deepcopy(generator).to(latents.device).train()
    weights = list(copy_.parameters()) if config.weight_lr > 0 else []
    for p in copy_.parameters():
        p.requires_grad_(bool(weights))
    z = latents.detach().clone().requires_grad_(True)
    groups = [{"params": [z], "lr": config.lr}] + ([{"params": weights, "lr": config.weight_lr}] if weights else [])
    opt = torch.optim.Adam(groups)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    with frozen(teacher), torch.enable_grad():
        for _ in range(steps):
            loss = refinement_loss(teacher, spec, copy_(z, labels, generator=noise), labels, config, generator=jitter)
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
        for index in s.indices():  # this process's and worker's share, as the stream deals them
            z, labels, noise = s.draw(index)
            jitter = torch.Generator().manual_seed(batch_seed(s.seed, index) ^ JITTER_SALT)
            images = refine_through_generator(self.teacher, self.spec, s.generator, z, labels, self.config,
                                              noise=noise, jitter=jitter)
            yield (normalize(images, self.spec.mean, self.spec.std) if self.normalized else images), labels


def refined_stream(stream: SyntheticStream, teacher: nn.Module, spec: InputSpec, config: RefineConfig, *, seed: int,
                   normalized: bool = True) -> RefinedBatches | GeneratorRefinedBatches:
    """A generator's stream of a set number of batches refined as `config.space` says: its pixels
    (`RefinedBatches`, jitter seeded by `seed`) or through the generator (`GeneratorRefinedBatches`)."""
    if config.space == "generator":
        return GeneratorRefinedBatches(stream, teacher, spec, config, normalized=normalized)
    return RefinedBatches(stream, teacher, spec, config, seed=seed, normalized=normalized)
