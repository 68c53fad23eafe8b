"""Training a conditional generator against a fixed teacher: class fidelity (cross-entropy), BatchNorm
statistics (KL or L2) of the whole batch and, for the first layers, of each class, the latent posterior
(`generators.posterior`), mode seeking and total variation, with random jitter before the teacher."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dfq import distributed
from dfq.io import truncate_log
from dfq.models.registry import check_spec_fits
from dfq.models.spec import InputSpec
from dfq.modes import frozen
from dfq.plots import plot_log
from generators.augment import random_jitter, scaled_shift
from generators.bn_stats import (
    BN_LOSSES,
    BNStatsRecorder,
    SumReducer,
    class_bn_kl_loss,
    distributed_sum_reducer,
    input_stats_kl,
)
from generators.checkpoint import (
    META_FILE,
    check_generator_spec,
    load_generator,
    load_train_state,
    save_generator,
    save_train_state,
    teacher_fingerprint,
)
from generators.grid import save_class_grid
from generators.losses import mode_seeking_loss, total_variation
from generators.network import ConditionalGenerator, GeneratorConfig, normalize
from generators.parallel import local_rows, synced_batchnorm
from generators.posterior import LatentPosterior, latent_nll
from generators.quality import capture_penultimate

DIVERSITY_SPACES = ("pooled", "feature", "pixel")  # several are joined by "+" in this order


@dataclass(frozen=True)
class GeneratorTrainConfig:
    """Generator training. Loss = ce_weight * CE + bn_weight * BN + class_bn_weight * per-class BN of the
    first class_bn_layers BN layers the image reaches + info_weight * latent NLL under q(z | x) (read from
    the image pooled to info_size) + diversity_weight * mode seeking + tv_weight * TV. diversity_space: mode seeking on the
    teacher's penultimate features ("feature"), the images ("pixel") or the images pooled to info_size
    ("pooled"), or the sum of such terms in several spaces ("pooled+feature").

    Where the defaults come from (bench/generator_bench.py, samples judged on training images; then the
    quantized student on the select half of the test images, docs/benchmarks.md "The generator re-made"):
    mode seeking on pooled images (instead of features) and the per-class BN term of the first 3 layers
    took the within-class diversity of 8x8-pooled images from 0.32 to 1.25 of real images' and the BN KL
    from 0.08 to 0.04 at 400 steps. Since 2026-12-03: 400 steps (800 before; 1,500 before 2026-12-01), the
    class loss at 0.3 (1.0 before) and mode seeking on the teacher's features as well ("pooled+feature";
    "pooled" before): on `select` as good a student at about a fifth fewer seconds, and feature diversity
    0.93 of real images' against 0.75 ("Design changes tried on `select`", "The cheaper generator on more
    seeds"; 0.91 for the instance of "The cheaper generator made the default"). The latent posterior term
    (info_weight) added little at weight 1 and made every figure worse at 10; it stays off."""

    steps: int = 400
    batch_size: int = 128
    lr: float = 2e-3
    betas: tuple[float, float] = (0.5, 0.999)
    warmup_steps: int = 50  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.05
    bn_loss: str = "kl"  # "kl" (GZNQ) or "l2" (GDFQ)
    bn_weight: float = 1.0
    ce_weight: float = 0.3
    label_smoothing: float = 0.0
    diversity_weight: float = 0.1
    diversity_space: str = "pooled+feature"
    info_weight: float = 0.0
    info_size: int = 8
    class_bn_weight: float = 1.0
    class_bn_layers: int = 3
    input_weight: float = 0.0
    tv_weight: float = 0.0
    max_shift: int = 2  # random-crop jitter in pixels of a 32-pixel image (scaled with the image side)
    flip: bool = True
    seed: int = 0
    log_every: int = 10
    save_every: int = 200
    grid_every: int = 500

    def __post_init__(self) -> None:
        if self.bn_loss not in BN_LOSSES:
            raise ValueError(f"unknown BN loss {self.bn_loss!r}; choose one of {', '.join(BN_LOSSES)}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("steps must be >= 1 and batch_size >= 2")
        spaces = list(self.diversity_spaces)
        if not set(spaces) <= set(DIVERSITY_SPACES) or spaces != sorted(set(spaces), key=DIVERSITY_SPACES.index):
            raise ValueError(f"diversity_space must be one of {', '.join(map(repr, DIVERSITY_SPACES))} or several "
                             f"of them joined by '+' in that order (e.g. 'pooled+feature'), got "
                             f"{self.diversity_space!r}")
        weights = (self.info_weight, self.class_bn_weight, self.diversity_weight, self.ce_weight, self.bn_weight,
                   self.input_weight, self.tv_weight)
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"loss weights must be >= 0 and finite, got {weights}")
        if self.info_size < 1 or self.class_bn_layers < 1:
            raise ValueError("info_size and class_bn_layers must be positive")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")

    @property
    def diversity_spaces(self) -> tuple[str, ...]:
        """The spaces of `diversity_space`, one mode-seeking term each."""
        return tuple(self.diversity_space.split("+"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The values of the fields added on 2026-12-01 that reproduce training as it was before them: a run saved
# before then resumes with these, not with today's defaults.
BEFORE_NEW_TERMS = {"diversity_space": "feature", "class_bn_weight": 0.0, "class_bn_layers": 3, "info_weight": 0.0,
                    "info_size": 8, "input_weight": 0.0}


def lr_factor(step: int, config: GeneratorTrainConfig) -> float:
    """Linear warm-up then cosine decay; `step` counts from 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def balanced_labels(n: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """n labels covering the classes as evenly as possible, in random order."""
    offset = int(torch.randint(num_classes, (1,), generator=generator))
    labels = (torch.arange(n) + offset) % num_classes
    return labels[torch.randperm(n, generator=generator)]


class GeneratorObjective(nn.Module):
    """The per-step losses of generator training; `forward(generator)` draws a batch and returns
    (total loss, dict of float parts). Kept separate from the loop so distillation can reuse it."""

    def __init__(self, teacher: nn.Module, spec: InputSpec, config: GeneratorTrainConfig, *,
                 reduce_sums: SumReducer | None = None, latent_dim: int | None = None, parallel: bool = False) -> None:
        """parallel: this process is one of several (`dfq.distributed`) that share each global batch of
        `config.batch_size` images (`generators.parallel`); the BN sums are then reduced across them."""
        super().__init__()
        self.teacher, self.spec, self.config = teacher, spec, config
        self.parallel = parallel
        if parallel and reduce_sums is None:
            reduce_sums = distributed_sum_reducer()
        self.reduce_sums = reduce_sums
        self.bn_loss = BN_LOSSES[config.bn_loss]
        self.posterior = None  # trained with the generator: its parameters are this module's
        if config.info_weight:
            if latent_dim is None:
                raise ValueError("info_weight > 0 needs latent_dim, the generator's latent size")
            self.posterior = LatentPosterior(latent_dim, spec.channels, config.info_size)

    def draw(self, generator: ConditionalGenerator, rng: torch.Generator, batch_size: int | None = None,
             rows: torch.Tensor | None = None):
        """(images in [0, 1], labels, latents) with pairs sharing labels: rows i and i + B/2. With `rows`, only
        those rows of the batch (every draw made for the whole batch)."""
        device = next(generator.parameters()).device
        half = (batch_size or self.config.batch_size) // 2
        y = balanced_labels(half, generator.config.num_classes, rng).repeat(2)
        z = torch.randn(2 * half, generator.config.latent_dim, generator=rng)
        y, z = y.to(device), z.to(device)
        noise = rng  # on an accelerator: a device generator seeded from rng, so that the draws stay reproducible,
        if device.type != "cpu":  # resumable (rng is saved) and the same in every process of a global batch
            noise = torch.Generator(device=device).manual_seed(int(torch.randint(2**62, (1,), generator=rng)))
        x = generator(z, y, generator=noise,
                      rows=None if rows is None else rows.to(device))
        if rows is not None:
            y, z = y[rows.to(device)], z[rows.to(device)]
        return x, y, z

    def losses(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, rng: torch.Generator, *,
               rows: torch.Tensor | None = None, batch: int | None = None) -> tuple[torch.Tensor, dict]:
        """The weighted loss of a drawn batch (with `rows`: this process's rows of a batch of `batch`) and its
        parts as floats (this process's)."""
        c = self.config
        jittered = random_jitter(x, max_shift=scaled_shift(c.max_shift, x.shape[-1]), flip=c.flip, generator=rng,
                                 rows=rows, batch=batch)
        spaces = c.diversity_spaces
        feature_div = c.diversity_weight and "feature" in spaces
        zero = x.new_zeros(())
        with BNStatsRecorder(self.teacher, reduce_sums=self.reduce_sums) as rec, \
                capture_penultimate(self.teacher, detach=False) if feature_div else contextlib.nullcontext() as feats:
            logits = self.teacher(normalize(jittered, self.spec.mean, self.spec.std))
        ce = F.cross_entropy(logits, y, label_smoothing=c.label_smoothing)
        bn = self.bn_loss(rec.stats)
        class_bn = class_bn_kl_loss(rec.stats[:c.class_bn_layers], y, num_classes=self.spec.num_classes,
                                    reduce_sums=self.reduce_sums) if c.class_bn_weight else zero
        info = latent_nll(*self.posterior(x), z) if self.posterior is not None else zero
        inputs = input_stats_kl(normalize(x, self.spec.mean, self.spec.std),
                                reduce_sums=self.reduce_sums) if c.input_weight else zero
        div = zero
        if c.diversity_weight:
            half = x.shape[0] // 2
            for space in spaces:  # one mode-seeking term per space, summed
                pairs = (feats[-1] if space == "feature" else x if space == "pixel"
                         else F.adaptive_avg_pool2d(x, c.info_size))
                div = div + mode_seeking_loss(pairs[:half], pairs[half:], z[:half], z[half:])
        tv = total_variation(x) if c.tv_weight else zero
        total = (c.ce_weight * ce + c.bn_weight * bn + c.class_bn_weight * class_bn + c.info_weight * info
                 + c.input_weight * inputs + c.diversity_weight * div + c.tv_weight * tv)
        acc = (logits.argmax(1) == y).float().mean()
        parts = {"loss": total.item(), "ce": ce.item(), "bn": bn.item(), "class_bn": class_bn.item(),
                 "info": info.item(), "input": inputs.item(), "div": div.item(), "tv": tv.item(),
                 "acc": acc.item()}
        return total, parts

    def forward(self, generator: ConditionalGenerator, rng: torch.Generator) -> tuple[torch.Tensor, dict]:
        if not self.parallel:
            x, y, z = self.draw(generator, rng)
            return self.losses(x, y, z, rng)
        batch = self.config.batch_size
        rows = local_rows(batch, distributed.rank(), distributed.world_size())
        with synced_batchnorm(generator, self.reduce_sums):
            x, y, z = self.draw(generator, rng, rows=rows)
        return self.losses(x, y, z, rng, rows=rows, batch=batch)


def train_generator(
    teacher: nn.Module,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    *,
    teacher_name: str,
    gen_config: GeneratorConfig | None = None,
    config: GeneratorTrainConfig = GeneratorTrainConfig(),
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> ConditionalGenerator:
    """Train a generator for `teacher` and write it to `out_dir` (checkpoints every `save_every` steps,
    losses to losses.csv and a plot of them, sample grids to samples_*.png). The generator's initial weights
    and every random draw come from `config.seed`. With `resume`, continue from out_dir's last checkpoint
    with its saved configs, optimizer, schedule and random state, so that an interrupted run ends with the
    weights an uninterrupted one reaches; `steps` then sets a new total (more steps than done: the cosine
    schedule is stretched over the new total, so the learning rate rises again). Ctrl-C saves a checkpoint
    before stopping.

    Raises:
        ValueError: the teacher has no BatchNorm; resuming for a different teacher; resuming a run that has
            already reached `steps` (or its own total when `steps` is None).
        FileExistsError: out_dir holds a generator and `resume` is off.
        FileNotFoundError: resume with nothing to resume.
    """
    with frozen(teacher):
        return _train(teacher, spec, Path(out_dir), teacher_name=teacher_name, gen_config=gen_config, config=config,
                      resume=resume, steps=steps, progress=progress)


def _train(teacher: nn.Module, spec: InputSpec, out: Path, *, teacher_name: str, gen_config: GeneratorConfig | None,
           config: GeneratorTrainConfig, resume: bool, steps: int | None, progress: bool) -> ConditionalGenerator:
    device = next(teacher.parameters()).device
    fingerprint = teacher_fingerprint(teacher)
    check_spec_fits(teacher, spec, name=teacher_name)
    if resume:
        generator, meta = load_generator(out, teacher_name=teacher_name, teacher=teacher, device=device)
        check_generator_spec(meta, spec, path=out)  # a run continues with the input it was started for
        state = load_train_state(out)
        # fields a run saved before they existed keep the behaviour that run had
        config = GeneratorTrainConfig(**{**BEFORE_NEW_TERMS, **state["config"], "betas": tuple(state["config"]["betas"])})
        if steps is not None:
            config = dataclasses.replace(config, steps=steps)
        if state["step"] >= config.steps:
            raise ValueError(f"the generator in {out} has trained {state['step']} steps, as many as "
                             f"{'asked' if steps is not None else 'its run was set to'} ({config.steps}): nothing "
                             f"to do; pass --steps larger than {state['step']} to train it further")
    else:
        if (out / META_FILE).exists():
            raise FileExistsError(f"{out} already holds a generator; pass --resume to continue it or pick another --out")
        if out.is_dir() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty and holds no generator; it is left untouched: pick another --out")
        with torch.random.fork_rng(devices=[]):  # initial weights from the run's seed, built on the CPU alike
            torch.manual_seed(config.seed)
            generator = ConditionalGenerator(gen_config or GeneratorConfig(num_classes=spec.num_classes,
                                                                           image_size=spec.image_size))
        generator.to(device)
        state = None
    parallel = distributed.is_distributed()  # several processes share each batch (generators.parallel)
    if parallel:
        local_rows(config.batch_size, 0, distributed.world_size())  # refuses a batch that does not split
        distributed.barrier()  # every process has checked `out` before the main one writes into it
    main = distributed.is_main_process()
    progress = progress and main
    with torch.random.fork_rng(devices=[]):  # the posterior's initial weights from the run's seed too
        torch.manual_seed(config.seed + 1)
        objective = GeneratorObjective(teacher, spec, config, latent_dim=generator.config.latent_dim,
                                       parallel=parallel).to(device)
    if state is not None and objective.posterior is not None:
        prefix = "posterior."
        objective.posterior.load_state_dict({k[len(prefix):]: v for k, v in state["objective"].items()
                                             if k.startswith(prefix)})
    generator.train()
    trained = list(generator.parameters()) + (list(objective.posterior.parameters()) if objective.posterior else [])
    opt = torch.optim.Adam(trained, lr=config.lr, betas=config.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config))
    rng = torch.Generator().manual_seed(config.seed)
    step, elapsed = 0, 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        rng.set_state(state["rng"])
        step, elapsed = state["step"], state["elapsed"]

    def checkpoint() -> None:
        if not main:  # one process writes; the state is the same in every process
            return
        record = {"step": step, "seconds": elapsed, "train_config": config.to_dict()}
        posterior = objective.posterior.state_dict() if objective.posterior is not None else {}
        save_train_state(out, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng.get_state(),
                               "step": step, "elapsed": elapsed, "config": config.to_dict(),
                               "objective": {f"posterior.{k}": v for k, v in posterior.items()}})
        save_generator(generator, out, teacher=teacher_name, fingerprint=fingerprint,
                       spec=dataclasses.asdict(spec), record=record)

    log_path = out / "losses.csv"
    fields = ["step", "loss", "ce", "bn", "class_bn", "info", "input", "div", "tv", "acc", "lr", "seconds"]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if state is not None and log_path.exists():  # rows logged after the checkpoint are logged again
            truncate_log(log_path, step, fields)
    bar = tqdm(total=config.steps, initial=step, desc="generator", disable=not progress)
    try:
        with open(log_path, "a", newline="") if main else contextlib.nullcontext() as log_file:
            writer = csv.DictWriter(log_file, fieldnames=fields) if main else None
            if main and log_file.tell() == 0:
                writer.writeheader()
            while step < config.steps:
                start = time.perf_counter()
                loss, parts = objective(generator, rng)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(trained)  # several processes: the global batch's gradient
                opt.step()
                sched.step()
                step += 1
                elapsed += time.perf_counter() - start
                bar.update(1)
                if parallel:  # logged: the mean over processes of their shares' losses
                    values = torch.tensor(list(parts.values()), device=loss.device)  # NCCL reduces GPU tensors only
                    parts = dict(zip(parts, (distributed.all_reduce(values, "sum") / distributed.world_size()).tolist()))
                if main and (step % config.log_every == 0 or step == config.steps):
                    writer.writerow({"step": step, **{k: round(v, 6) for k, v in parts.items()},
                                     "lr": sched.get_last_lr()[0], "seconds": round(elapsed, 2)})
                    log_file.flush()
                    bar.set_postfix(ce=f"{parts['ce']:.3f}", bn=f"{parts['bn']:.3f}", acc=f"{parts['acc']:.2f}")
                if step % config.save_every == 0 or step == config.steps:
                    checkpoint()
                if main and (step % config.grid_every == 0 or step == config.steps):
                    save_class_grid(generator, out / f"samples_{step:06d}.png")
                    save_class_grid(generator, out / "samples.png")
    except KeyboardInterrupt:
        checkpoint()
        bar.close()
        print(f"\ninterrupted at step {step}; checkpoint saved to {out} (continue with --resume)")
        raise
    bar.close()
    if main:
        plot_log(log_path, out / "losses.png", title=f"generator for {teacher_name}")
    distributed.barrier()  # the files are complete before any process goes on to read them
    return generator.eval()

