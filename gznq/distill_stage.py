"""The distillation stage of the pipeline: its data, checkpoints, log and resume."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, TensorDataset

from dfq import distributed
from dfq.data import load_dataset
from dfq.io import atomic_write, truncate_log
from dfq.models.spec import InputSpec
from dfq.plots import plot_log
from generators.checkpoint import load_generator
from generators.network import ConditionalGenerator, GeneratorConfig, normalize
from generators.parallel import local_rows
from generators.pixel_opt import load_pixels
from gznq.distill import DistillConfig, Distiller, run_distillation
from gznq.sources import Source

STATE_FILE = "distill_state.pt"
LOG_FILE = "distill_log.csv"
PLOT_FILE = "distill_log.png"
DISTILL_FILES = (STATE_FILE, LOG_FILE, PLOT_FILE)


class LocalRowsSampler:
    """Shuffled global batches of `batch_size` indices (the last partial one dropped), of which this process
    takes its rows (`generators.parallel.local_rows`): the processes together load each global batch once,
    and in one process this is a shuffled batch sampler.

    Raises:
        ValueError: the batch does not split into equal shares of pairs for the processes.
    """

    def __init__(self, dataset: Dataset, batch_size: int, generator: torch.Generator) -> None:
        self.rows = local_rows(batch_size, distributed.rank(), distributed.world_size()).tolist() \
            if distributed.is_distributed() else list(range(batch_size))
        self.batches = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=True)

    def __iter__(self):
        for batch in self.batches:
            yield [batch[i] for i in self.rows]

    def __len__(self) -> int:
        return len(self.batches)


def check_pixel_batch(path: Path, num_images: int, batch_size: int, world: int) -> None:
    """Refuse a pixel set of `num_images` smaller than a distillation batch under `world` > 1 processes: one
    process shrinks its batch to the set, but shares of a global batch cannot shrink.

    Raises:
        ValueError: naming the batch size that would do.
    """
    if world > 1 and num_images < batch_size:
        raise ValueError(f"the pixel set {str(path)!r} holds {num_images} images, fewer than a distillation batch of "
                         f"{batch_size}: under several processes use a --distill-batch-size of at most "
                         f"{num_images} divisible by {2 * world}")


def distill_data(source: Source, *, teacher: nn.Module, teacher_name: str, spec: InputSpec, config: DistillConfig,
                 seed: int, fresh_generator: bool = False, workers: int = 2):
    """(generator, batches) for the Distiller, exactly one of them set: the source's generator in the loop
    (or, with `fresh_generator`, an untrained one of the default architecture, as the GDFQ recipe trains its
    own), or the real or pixel images cycled in shuffled batches (under several processes, each its rows of
    each global batch: `LocalRowsSampler`)."""
    device = next(teacher.parameters()).device
    if source.kind == "generator":
        if fresh_generator:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                generator = ConditionalGenerator(GeneratorConfig(num_classes=spec.num_classes,
                                                                 image_size=spec.image_size))
            return generator.to(device), None
        generator, _ = load_generator(source.path, teacher_name=teacher_name, teacher=teacher, device=device)
        return generator, None
    shuffle = torch.Generator().manual_seed(seed)
    if source.kind == "real":
        ds = load_dataset(source.path, spec, train=True)
        return None, DataLoader(ds, batch_sampler=LocalRowsSampler(ds, config.batch_size, shuffle),
                                num_workers=workers, generator=shuffle, persistent_workers=workers > 0)
    images, labels, _ = load_pixels(source.path, teacher_name=teacher_name)
    ds = TensorDataset(normalize(images, spec.mean, spec.std), labels)
    check_pixel_batch(source.path, len(ds), config.batch_size, distributed.world_size())
    return None, DataLoader(ds, batch_sampler=LocalRowsSampler(ds, min(config.batch_size, len(ds)), shuffle),
                            generator=shuffle)


def load_distill_state(work: Path) -> dict:
    """The checkpoint of an interrupted distillation in `work`.

    Raises:
        FileNotFoundError: there is none.
        ValueError: the file cannot be read.
    """
    path = work / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume in {str(work)!r}: {STATE_FILE} is missing (the run was "
                                "interrupted before its first distillation checkpoint)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc}); delete it to start "
                         "the distillation again") from exc


def run_distill_stage(distiller: Distiller, work: Path | None, *, save: Callable[[Path], None] | None = None,
                      extra_state: dict | None = None, save_every: int = 200, progress: bool = True) -> None:
    """Run `distiller` to its last step. With a working directory, every `save_every` steps (and on Ctrl-C)
    write `distill_state.pt` (the Distiller's state plus `extra_state`) and call `save(work)` so that the
    student there evaluates at that step; log the mean of every loss of `distiller.log_columns` over each 10
    steps to `distill_log.csv` (columns fixed up front, empty where a loss was not computed in the window),
    and plot it to `distill_log.png` at the end."""
    if work is None:
        run_distillation(distiller, progress=progress)
        return
    log_path = work / LOG_FILE
    columns = ["step", "seconds", *distiller.log_columns]
    fresh = not log_path.exists() or log_path.stat().st_size == 0
    if not fresh:  # rows logged after the checkpoint being resumed from are logged again
        header = truncate_log(log_path, distiller.step_index)
        if header != columns:
            raise ValueError(f"{log_path} has columns {header}, this distillation logs {columns}; it is not "
                             "the log of the run being resumed")
    with open(log_path, "a", newline="") as log_file:
        writer = csv.DictWriter(log_file, fieldnames=columns)
        if fresh:
            writer.writeheader()

        def on_log(step: int, losses: dict, seconds: float) -> None:
            writer.writerow({"step": step, "seconds": round(seconds, 2),
                             **{k: "" if v is None else round(v, 6) for k, v in losses.items()}})
            log_file.flush()

        def on_checkpoint() -> None:
            state = {**distiller.state_dict(), **(extra_state or {})}
            atomic_write(work / STATE_FILE, lambda tmp: torch.save(state, tmp))
            if save is not None:
                save(work)

        run_distillation(distiller, on_log=on_log, on_checkpoint=on_checkpoint, save_every=save_every,
                         progress=progress)
    plot_log(log_path, work / PLOT_FILE, title="distillation")

