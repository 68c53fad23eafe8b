"""`SyntheticStream`: an endless, seeded, class-balanced stream of generated batches for calibration and
distillation, correct under DataLoader workers and distributed ranks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from generators.network import ConditionalGenerator, normalize


def batch_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for batch `index` of stream `seed`."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SyntheticStream(IterableDataset):
    """Batches (images, labels) from a trained generator, where batch i depends only on (seed, i).

    Each consumer — DataLoader worker and distributed rank — takes the batches whose index is its own
    modulo the number of consumers, so together they produce exactly the single-process sequence, with no
    batch generated twice. Use it directly (`for x, y in stream`) or in a DataLoader with
    `batch_size=None`. Labels cover `classes` (default: all) evenly, in random order within a batch.

    Args:
        generator: a trained ConditionalGenerator (used in eval mode, without gradients).
        mean, std: the teacher's input normalization; images come out normalized (`normalized=False`
            returns [0, 1] pixels).
        batch_size: images per batch.
        classes: restrict labels to these classes.
        seed: the stream's seed.
        num_batches: stop after this many batches in total (None: endless).
        device: where images and labels are generated and returned (default: the generator's device).
        start: index of the first batch (resume a stream where it stopped).

    Raises:
        ValueError: a bad batch size or an out-of-range class.
    """

    def __init__(
        self,
        generator: ConditionalGenerator,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        batch_size: int = 256,
        classes: Sequence[int] | None = None,
        seed: int = 0,
        num_batches: int | None = None,
        device: torch.device | str | None = None,
        normalized: bool = True,
        start: int = 0,
    ) -> None:
        super().__init__()
        num_classes = generator.config.num_classes
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        classes = list(range(num_classes)) if classes is None else [int(c) for c in classes]
        if not classes or any(not 0 <= c < num_classes for c in classes):
            raise ValueError(f"classes must be a non-empty subset of 0..{num_classes - 1}, got {classes}")
        self.generator = generator
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.seed, self.num_batches, self.start = batch_size, seed, num_batches, start
        self.classes = torch.tensor(classes)
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.normalized = normalized

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless SyntheticStream has no length")
        return self.num_batches

    def _consumer(self) -> tuple[int, int]:
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rank, world = _rank_and_world()
        return rank * nworkers + wid, world * nworkers

    def draw(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
        """The draws behind batch `index`: (latents, labels) on the stream's device and the generator of its
        pixel noise, seeded by (seed, index) alone."""
        rng = torch.Generator().manual_seed(batch_seed(self.seed, index))
        n, k = self.batch_size, len(self.classes)
        order = (torch.arange(n) + index * n) % k  # even coverage across consecutive batches
        labels = self.classes[order[torch.randperm(n, generator=rng)]]
        z = torch.randn(n, self.generator.config.latent_dim, generator=rng)
        noise_rng = rng
        if self.device.type != "cpu":
            noise_rng = torch.Generator(device=self.device).manual_seed(batch_seed(self.seed, index) ^ 0x5EED)
        return z.to(self.device), labels.to(self.device), noise_rng

    @torch.no_grad()  # not inference_mode: students train on these images with autograd
    def make_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` of this stream: (images, labels) on the stream's device."""
        z, labels, noise_rng = self.draw(index)
        self.generator.to(self.device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            images = self.generator(z, labels, generator=noise_rng)
        finally:
            self.generator.train(was_training)
        if self.normalized:
            images = normalize(images, self.mean, self.std)
        return images, labels

    def indices(self) -> Iterator[int]:
        """The indices of the batches this consumer (DataLoader worker, distributed rank) takes, in order."""
        consumer, consumers = self._consumer()
        index = self.start + consumer
        end = None if self.num_batches is None else self.start + self.num_batches
        while end is None or index < end:
            yield index
            index += consumers

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in self.indices():
            yield self.make_batch(index)
