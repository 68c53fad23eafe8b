"""Distillation of a fake-quantized student from its teacher on the synthetic stream, with the generator
in the loop (GAN-style): the generator keeps its BatchNorm and class losses and is also pushed, within a
bound, toward samples where student and teacher disagree; the student learns to agree on them.

Also hosts the published GDFQ recipe (`gdfq_recipe`) so it runs in the same harness at equal budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dfq import distributed
from dfq.losses import kd_loss
from dfq.models.spec import InputSpec
from dfq.modes import frozen, restored
from dfq.quant.calibrate import quantizers
from generators.bn_stats import BN_LOSSES
from generators.network import ConditionalGenerator, normalize
from generators.parallel import gather_rows, local_rows, synced_batchnorm
from generators.quality import capture_penultimate
from generators.trainer import GeneratorObjective, GeneratorTrainConfig


@dataclass(frozen=True)
class DistillConfig:
    """Quantization-aware distillation on generated data.

    Student: `optimizer` ("adam" or "sgd") at `lr` on weights (weight decay `weight_decay`), LSQ step
    sizes at `scale_lr` (0 keeps the ranges as calibrated; `weight_scales=False` learns only the activation
    step sizes and keeps the weight grids, against which a reconstruction chose each weight's rounding);
    loss = kl_weight * T^2 KL(teacher || student) at `temperature` + ce_weight * CE on the generator's
    labels + feature_weight * MSE of penultimate features. `student_bn`: "frozen" keeps BN running
    statistics (the teacher's), "train" updates them on the synthetic batches (GDFQ). `dynamic_weights`: weight ranges from each forward's min-max (GDFQ)
    instead of learned. `act_ema_steps`: for this many first steps activation ranges follow an EMA of the
    batch ranges (GDFQ), then freeze.

    `mix_fraction` of every student batch is replaced by blends lam * a + (1 - lam) * b of two images of the
    batch (lam uniform in [0, 1]): generated images are so typical that student and teacher soon agree on
    all of them, and blends between classes are where their disagreement, and the signal, is left.

    Generator (in the loop when generator_every > 0): Adam at generator_lr, betas; its loss is
    bn_weight * BN (bn_loss) + gen_ce_weight * CE + diversity_weight * mode seeking
    - adversarial_weight * min(KL(teacher || student), adversarial_bound): the bound keeps it from chasing
    disagreement into images the teacher no longer recognizes. `warmup_steps`: generator-only steps first.
    """

    steps: int = 2000
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-5
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    scale_lr: float = 1e-4
    weight_scales: bool | None = None  # None: learned here; the pipeline keeps them after a reconstruction
    temperature: float = 4.0  # at 1 the student soon matches the teacher's near one-hot outputs: no signal
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    feature_weight: float = 0.0
    student_bn: str = "frozen"
    dynamic_weights: bool = False
    act_ema_steps: int = 0
    act_ema_momentum: float = 0.01
    cosine: bool = True  # cosine decay of the student's learning rates
    generator_every: int = 1
    generator_lr: float = 1e-4
    generator_betas: tuple[float, float] = (0.5, 0.999)
    bn_loss: str = "kl"
    bn_weight: float = 1.0
    gen_ce_weight: float = 1.0
    diversity_weight: float = 0.1
    adversarial_weight: float = 0.1
    adversarial_bound: float = 1.0
    warmup_steps: int = 0
    max_shift: int = 2
    mix_fraction: float = 0.5  # share of each student batch replaced by two-image blends (boundary samples)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.student_bn not in ("frozen", "train"):
            raise ValueError(f"student_bn must be 'frozen' or 'train', got {self.student_bn!r}")
        if self.bn_loss not in BN_LOSSES:
            raise ValueError(f"unknown BN loss {self.bn_loss!r}; choose one of {', '.join(BN_LOSSES)}")
        if self.steps < 1 or self.batch_size < 2 or self.temperature <= 0:
            raise ValueError("steps >= 1, batch_size >= 2 and temperature > 0 are required")
        if not 0.0 <= self.mix_fraction <= 1.0:
            raise ValueError(f"mix_fraction must be in [0, 1], got {self.mix_fraction}")
        if self.adversarial_weight < 0 or self.adversarial_bound <= 0:
            raise ValueError("adversarial_weight must be >= 0 and adversarial_bound > 0")
        if min(self.lr, self.scale_lr, self.weight_decay) < 0 or self.generator_lr <= 0:
            raise ValueError(f"learning rates and weight decay must be >= 0 (generator_lr > 0), got lr={self.lr}, "
                             f"scale_lr={self.scale_lr}, weight_decay={self.weight_decay}, "
                             f"generator_lr={self.generator_lr}")
        if min(self.generator_every, self.warmup_steps, self.act_ema_steps) < 0:
            raise ValueError("generator_every, warmup_steps and act_ema_steps must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def gdfq_recipe(steps: int, *, batch_size: int = 128, seed: int = 0) -> DistillConfig:
    """GDFQ (Xu et al., ECCV 2020) at a step budget: generator L2 BN loss (weight 0.1) + CE, Adam 1e-3
    betas (0.5, 0.999), every step, no adversarial term; student KL at temperature 20 + CE, SGD Nesterov
    lr 1e-4 momentum 0.9 weight decay 1e-4, BN updated on synthetic data, weights quantized from their
    current min-max, activation ranges tracked by moving average for the first 1% of steps (4 of 400
    epochs) and frozen after; the first 1% of steps train the generator only."""
    early = max(1, steps // 100)
    return DistillConfig(
        steps=steps, batch_size=batch_size, optimizer="sgd", lr=1e-4, momentum=0.9, nesterov=True,
        weight_decay=1e-4, scale_lr=0.0, temperature=20.0, kl_weight=1.0, ce_weight=1.0, student_bn="train",
        dynamic_weights=True, act_ema_steps=early, act_ema_momentum=0.01, cosine=False, generator_every=1,
        generator_lr=1e-3, generator_betas=(0.5, 0.999), bn_loss="l2", bn_weight=0.1, gen_ce_weight=1.0,
        diversity_weight=0.0, adversarial_weight=0.0, warmup_steps=early, max_shift=0, mix_fraction=0.0, seed=seed,
    )


@contextlib.contextmanager
def student_training_mode(student: nn.Module, *, freeze_bn: bool, frozen_parameters: bool = False):
    """Train mode for the student, with its BatchNorm layers in eval mode when `freeze_bn` and no parameter
    requiring grad when `frozen_parameters` (gradients still reach its input); restored on exit."""
    with restored(student):
        student.train()
        if freeze_bn:
            for m in student.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        if frozen_parameters:
            for p in student.parameters():
                p.requires_grad_(False)
        yield student


def cycle(loader: Iterable) -> Iterator:
    """Iterate `loader` again and again (a fresh pass, so a shuffling loader reshuffles)."""
    while True:
        empty = True
        for item in loader:
            empty = False
            yield item
        if empty:
            raise ValueError("cannot distill on an empty set of images")


class Distiller:
    """One distillation run's state: student, teacher, data, optimizers and random state; `step()` does
    one generator update (when due) and one student update and returns the losses as floats.

    Data comes either from `generator` (in the loop, GAN-style) or from `batches`, an iterable of
    (normalized images, labels) cycled endlessly (real images: the ceiling; a fixed pixel set).
    `state_dict()` / `load_state_dict()` capture everything needed to continue identically (for
    `batches`, the position in the data is not captured).

    Under several processes (`dfq.distributed`, e.g. `accelerate launch`) each step is one step on a global
    batch of `batch_size` images that the processes share (`generators.parallel`): each makes or loads its
    rows (`batches` must yield this process's rows of each global batch), every random draw is made for the
    whole batch from the same seeded generator, blends pair images of the whole batch, every batch statistic
    (the teacher's and generator's BN, a student BN in training, tracked activation ranges) is the global
    batch's, the gradients are averaged, and the returned losses are the global batch's. Every process then
    holds the student and generator one process training on the whole batch would hold.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, spec: InputSpec, config: DistillConfig, *,
                 generator: ConditionalGenerator | None = None, batches: Iterable | None = None) -> None:
        if (generator is None) == (batches is None):
            raise ValueError("give exactly one data source: a generator or batches")
        self.parallel = distributed.is_distributed()
        if self.parallel:  # refuses a batch that does not split into equal shares of pairs
            local_rows(config.batch_size, distributed.rank(), distributed.world_size())
        self._local_batch = config.batch_size // distributed.world_size()
        self.student, self.teacher, self.generator, self.spec, self.config = student, teacher, generator, spec, config
        self.batches = cycle(batches) if batches is not None else None
        c = config
        self.act_quantizers = [q for n, q in quantizers(student) if n.endswith("input_quantizer")]
        self.weight_quantizers = [q for n, q in quantizers(student) if n.endswith("weight_quantizer")]
        for q in self.weight_quantizers:
            q.dynamic = c.dynamic_weights
        learn_scales = c.scale_lr > 0
        for q in self.act_quantizers:
            q.set_learnable(learn_scales)
        if not c.dynamic_weights:  # dynamic weight ranges come from each forward, not from a learned scale
            for q in self.weight_quantizers:
                q.set_learnable(learn_scales and c.weight_scales is not False)
        scales = [q.scale for q in self.act_quantizers + self.weight_quantizers if q.scale.requires_grad]
        scale_ids = {id(p) for p in scales}
        weights = [p for p in student.parameters() if p.requires_grad and id(p) not in scale_ids]
        groups = [{"params": weights, "lr": c.lr, "weight_decay": c.weight_decay}]
        if scales:
            groups.append({"params": scales, "lr": c.scale_lr, "weight_decay": 0.0})
        if c.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov)
        else:
            self.opt = torch.optim.Adam(groups, lr=c.lr)
        schedule: Callable[[int], float] = (
            (lambda s: 0.5 * (1 + torch.cos(torch.tensor(torch.pi * min(s / c.steps, 1.0))).item())) if c.cosine
            else (lambda s: 1.0)
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.gen_opt = (torch.optim.Adam(generator.parameters(), lr=c.generator_lr, betas=c.generator_betas)
                        if generator is not None else None)
        self.objective = GeneratorObjective(teacher, spec, GeneratorTrainConfig(
            batch_size=c.batch_size, bn_loss=c.bn_loss, bn_weight=c.bn_weight, ce_weight=c.gen_ce_weight,
            diversity_weight=c.diversity_weight, diversity_space="feature", class_bn_weight=0.0,
            max_shift=c.max_shift, flip=c.max_shift > 0),  # distillation's generator terms as they were measured
            parallel=self.parallel)
        self.reducer = self.objective.reduce_sums  # None in one process: batch statistics stay local
        self.rng = torch.Generator().manual_seed(c.seed)
        self.step_index = 0
        self.seconds = 0.0  # time spent in step(), kept across a resume
        self._set_tracking()

    @property
    def log_columns(self) -> list[str]:
        """The losses `step()` can return under this config, in a fixed order: the columns of a log."""
        c = self.config
        columns = ["kl"] + (["ce"] if c.ce_weight else []) + (["feat"] if c.feature_weight else []) + ["agree"]
        if self.generator is not None and c.generator_every:
            columns += ["g_bn", "g_ce", "g_div"] + (["g_adv"] if c.adversarial_weight > 0 else [])
        return columns

    def _set_tracking(self) -> None:
        tracking = self.step_index < self.config.act_ema_steps
        for q in self.act_quantizers:
            q.track_momentum = self.config.act_ema_momentum if tracking else None

    def _rows(self) -> torch.Tensor | None:
        """This process's rows of the global batch (None in one process: all of it)."""
        if not self.parallel:
            return None
        return local_rows(self.config.batch_size, distributed.rank(), distributed.world_size())

    def _generator_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        c = self.config
        self.generator.train()
        rows = self._rows()
        with synced_batchnorm(self.generator, self.reducer):
            x, y, z = self.objective.draw(self.generator, self.rng, rows=rows)
        loss, gen_parts = self.objective.losses(x, y, z, self.rng, rows=rows, batch=c.batch_size)
        parts = {"g_bn": gen_parts["bn"], "g_ce": gen_parts["ce"], "g_div": gen_parts["div"]}
        inputs = normalize(x, self.spec.mean, self.spec.std)
        if c.adversarial_weight > 0 and self.step_index >= c.warmup_steps:
            with student_training_mode(self.student, freeze_bn=True, frozen_parameters=True):
                s_logits = self.student(inputs)
            with torch.no_grad():
                t_logits = self.teacher(inputs)
            disagreement = kd_loss(s_logits, t_logits, 1.0)
            loss = loss - c.adversarial_weight * bounded_mean(disagreement, c.adversarial_bound)
            parts["g_adv"] = disagreement.item()
        self.gen_opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.generator.parameters())
        self.gen_opt.step()
        return inputs.detach(), y, parts

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(normalized images, labels, generator losses) for this step."""
        c = self.config
        if self.generator is None:
            x, y = next(self.batches)
            if self.parallel and len(x) != self._local_batch:
                raise ValueError(f"under {distributed.world_size()} processes each process's batches must hold its "
                                 f"share of a global batch of {c.batch_size} ({self._local_batch} images, its "
                                 f"local_rows), got {len(x)}; load them with gznq.distill_stage.LocalRowsSampler "
                                 "and a dataset of at least one global batch")
            device = next(self.student.parameters()).device
            return x.to(device), y.to(device), {}
        if c.generator_every and self.step_index % c.generator_every == 0:
            return self._generator_step()
        self.generator.eval()
        with torch.no_grad():
            x, y, _ = self.objective.draw(self.generator, self.rng, rows=self._rows())
        return normalize(x, self.spec.mean, self.spec.std), y, {}

    def _mix(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace the first mix_fraction of the batch by blends with randomly chosen partners; returns the
        batch and a mask of its blended images. Under several processes each process holds its rows of the
        global batch (`local_rows`): the blends are made on the whole batch (gathered), and each keeps its rows."""
        whole = gather_rows(inputs)  # `inputs` itself in one process
        n = int(round(self.config.mix_fraction * whole.shape[0]))
        blended = torch.arange(whole.shape[0], device=inputs.device) < n
        if n > 0:
            partners = torch.randint(whole.shape[0], (n,), generator=self.rng).to(inputs.device)
            lam = torch.rand(n, generator=self.rng).to(inputs.device).view(-1, *([1] * (inputs.dim() - 1)))
            whole = torch.cat([lam * whole[:n] + (1 - lam) * whole[partners], whole[n:]])
        if not self.parallel:
            return whole, blended
        rows = local_rows(whole.shape[0], distributed.rank(), distributed.world_size()).to(inputs.device)
        return whole[rows], blended[rows]

    def _student_step(self, inputs: torch.Tensor, y: torch.Tensor) -> dict:
        c = self.config
        inputs, blended = self._mix(inputs)
        with torch.no_grad(), capture_penultimate(self.teacher) as t_feats:
            t_logits = self.teacher(inputs)
        with student_training_mode(self.student, freeze_bn=c.student_bn == "frozen"), \
                synced_batchnorm(self.student, self.reducer), \
                capture_penultimate(self.student, detach=False) as s_feats:
            s_logits = self.student(inputs)
        kl = kd_loss(s_logits, t_logits, c.temperature)
        loss = c.kl_weight * kl
        parts = {"kl": kl.item()}
        if c.ce_weight:  # on the unblended images of the batch, whose labels hold: their mean over all processes
            kept = ~blended
            total = distributed.all_reduce(kept.sum()).item()
            ce = (F.cross_entropy(s_logits[kept], y[kept], reduction="sum") * distributed.world_size() / total
                  if total else s_logits.new_zeros(()))
            loss = loss + c.ce_weight * ce
            parts["ce"] = ce.item()
        if c.feature_weight:
            feat = F.mse_loss(s_feats[-1], t_feats[-1])
            loss = loss + c.feature_weight * feat
            parts["feat"] = feat.item()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(p for group in self.opt.param_groups for p in group["params"])
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            for q in self.act_quantizers + self.weight_quantizers:
                if q.scale.requires_grad:
                    q.scale.clamp_(min=1e-8)
        parts["agree"] = (s_logits.argmax(1) == t_logits.argmax(1)).float().mean().item()
        return parts

    def step(self) -> dict:
        """One step: a generator update when due (or a fresh batch without one), then a student update
        unless still in the generator warm-up. Returns the losses of the step (a subset of `log_columns`).
        The teacher is used frozen and in eval mode, and left as it was."""
        with frozen(self.teacher):
            self._set_tracking()
            inputs, y, parts = self._next_batch()
            if self.step_index >= self.config.warmup_steps:
                parts.update(self._student_step(inputs, y))
        self.step_index += 1
        if self.parallel and parts:  # the global batch's losses: the mean of the processes' equal shares
            values = torch.tensor(list(parts.values()), device=inputs.device)  # NCCL reduces GPU tensors only
            parts = dict(zip(parts, (distributed.all_reduce(values) / distributed.world_size()).tolist()))
        return parts

    def state_dict(self) -> dict:
        state = {"student": self.student.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                 "rng": self.rng.get_state(), "step": self.step_index, "seconds": self.seconds,
                 "config": self.config.to_dict()}
        if self.generator is not None:
            state.update(generator=self.generator.state_dict(), gen_opt=self.gen_opt.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        if self.generator is not None:
            self.generator.load_state_dict(state["generator"])
            self.gen_opt.load_state_dict(state["gen_opt"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.rng.set_state(state["rng"])
        self.step_index = state["step"]
        self.seconds = state.get("seconds", 0.0)
        self._set_tracking()


def bounded_mean(value: torch.Tensor, bound: float) -> torch.Tensor:
    """min(value, bound) for a mean over a batch (its gradient when below the bound, none above). Under several
    processes `value` is this process's mean over its equal share of the global batch: the bound applies to the
    mean over all processes, and below it each process keeps its share's gradient (averaged, the whole batch's)."""
    if not distributed.is_distributed():
        return torch.clamp(value, max=bound)
    mean = distributed.all_reduce(value) / distributed.world_size()
    return value if bool(mean < bound) else value.detach().clamp(max=bound)  # at the bound, as clamp: none


def run_distillation(distiller: Distiller, *, on_log: Callable[[int, dict, float], None] | None = None,
                     on_checkpoint: Callable[[], None] | None = None, log_every: int = 10, save_every: int = 200,
                     progress: bool = True) -> None:
    """Step `distiller` to its configured number of steps, calling `on_log(step, losses, seconds)` every
    `log_every` steps and `on_checkpoint()` every `save_every` steps, at the end, and on Ctrl-C (which is
    then re-raised); `seconds` counts from the run's start, across resumes. `losses` has every key of `distiller.log_columns`: the mean of that loss over the steps
    since the last log, or None where none of them computed it (a generator loss between generator updates)."""
    from tqdm.auto import tqdm

    c = distiller.config
    bar = tqdm(total=c.steps, initial=distiller.step_index, desc="distill", disable=not progress)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    try:
        while distiller.step_index < c.steps:
            start = time.perf_counter()
            parts = distiller.step()
            distiller.seconds += time.perf_counter() - start
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            bar.update(1)
            s = distiller.step_index
            if on_log is not None and (s % log_every == 0 or s == c.steps):
                means = {k: sums[k] / counts[k] if counts.get(k) else None for k in distiller.log_columns}
                on_log(s, means, distiller.seconds)
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items() if k in ("kl", "agree", "g_bn") and v is not None})
                sums, counts = {}, {}
            if on_checkpoint is not None and (s % save_every == 0 or s == c.steps):
                on_checkpoint()
    except KeyboardInterrupt:
        if on_checkpoint is not None:
            on_checkpoint()
        raise
    finally:
        bar.close()
