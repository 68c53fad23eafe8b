"""Pixel refinement of synthetic batches: a few steps of optimizing a batch's pixels against the teacher's
BatchNorm statistics (and, when weighted, its cross-entropy), starting from crops of the generator's samples
(or, for the pixel baseline, from noise).

A generator trained on the BN losses matches the statistics on average over many batches; refinement makes
each batch that a student will be calibrated and reconstructed on match them itself, as pixel optimization
does, at a fraction of its cost (it starts from an image, not from noise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dfq.models.spec import InputSpec
from dfq.modes import frozen
from generators.augment import random_jitter, random_resized_crop, scaled_shift
from generators.bn_stats import BN_LOSSES, BNStatsRecorder, at_least_float32
from generators.network import normalize
from generators.quality import capture_penultimate

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}  # the teacher's autocast dtype (None: none)
SPACES = ("pixels", "generator")  # what refinement optimizes: the pixels, or the latents and a generator's copy
PIXEL_ONLY = ("crop_scale", "start_logit_scale", "tv_weight", "boundary_share", "spread_weight")  # not in "generator"


@dataclass(frozen=True)
class RefineConfig:
    """steps: Adam steps per batch (0: no refinement). lr: Adam rate on the pixel logits, cosine-annealed to 0.
    bn_loss: "kl" (GZNQ) or "l2" (GDFQ), measured on the whole batch, with weight bn_weight. ce_weight: weight
    of the teacher's cross-entropy on the batch's labels; 0 refines toward the BN statistics alone, which
    leaves the teacher about as unsure of refined images as of real ones (the class loss drives every image
    to full confidence, which real images do not have). tv_weight: total-variation prior. max_shift, flip:
    random jitter before the teacher at every step (as in generator training; pixels of a 32-pixel image, scaled
    with the image side), so the pixels do not overfit
    one view. boundary_share: share of each batch refined toward a soft two-class target, lam * its label +
    (1 - lam) * another class drawn at random, lam ~ U(boundary_min, 1), instead of its label alone (images
    near the teacher's class boundaries; it acts through the class loss, so it needs ce_weight > 0); the
    label handed on stays the image's own class. crop_scale: below 1, each starting image is first replaced
    by a random resized crop of it covering between crop_scale and all of its area (`random_resized_crop`),
    so that refinement starts from objects at other scales and positions than the generator's few modes per
    class and the batch it makes is more varied; 1.0 starts from the samples as drawn. start_logit_scale:
    refinement optimizes pixel logits (images are their sigmoid) and starts from the logits of the images it is
    given multiplied by this; below 1 it pulls saturated pixels back toward grey, where a few steps at this lr
    can move them (ResNet-20's shipped generator puts 25% of its pixels within 0.05 of black or white, mean logit
    magnitude 2.09 against noise starts' 0.80, `bench/set_stats.py`); 1.0 starts from the images as given.
    1.0 stays the default: 0.4 lost 0.42 more than 1.0 at W4A4 `paper` on the select half, worse on each of four
    seeds (docs/benchmarks.md, "Noise against the generator over five seeds"). spread_weight: weight of a
    within-class spread term, `within_class_similarity` of the teacher's penultimate features (mean cosine
    similarity of pairs of images the teacher puts in one class); minimizing it pushes images of one class apart
    in the features the student is calibrated on (IntraQ's intra-class heterogeneity, at refinement time).
    0 (the default) leaves it out: at 0.02 it took the generator's seed-0 set past noise's feature spread, and
    at 0.02 and 0.05 it made no measurable difference at W4A4 `paper` on the select half (-0.02 +- 0.15 over six
    seeds, -0.03 +- 0.18 over five; docs/benchmarks.md, "Feature spread tested as a cause").
    precision: "float32" (the default) or "bfloat16", which runs the teacher's forward pass under autocast to
    bfloat16 (and so its backward pass too; the BN statistics, the losses and the pixels stay float32), for
    CPUs with AMX or AVX-512 BF16 and GPUs with native bfloat16 (`check_precision` refuses other devices). On
    this project's AMX CPU a 64-step ResNet-20 set took about a quarter less time, and the students tied on the
    drop but agreed with their teacher less (three seeds; docs/benchmarks.md, "Refinement steps at 4 bits, and
    refinement in bfloat16"), so float32 stays the default.
    space: what the steps optimize. "pixels" (the default): each image's pixel logits, as above. "generator": each
    batch's latents (at rate lr) and a private copy of the generator's weights (at rate weight_lr; 0 leaves them
    and optimizes the latents alone), so that the images stay the generator's outputs
    (`generators.generator_refine`); it needs a generator source, and the options that act on pixels
    (`PIXEL_ONLY`: crop_scale, start_logit_scale, tv_weight, boundary_share, spread_weight) are refused unless at
    their defaults, where they do nothing; weight_lr is refused in space "pixels". The generator's pixel noise
    is drawn afresh at every step, as in its training, and for the images handed out. A step cost about 1.45
    pixel steps for ResNet-20 on one thread (docs/benchmarks.md, "Design changes tried on `select`"). Not the
    default: at the seconds of 64 pixel steps it was 0.14 +- 0.16 ahead of them at W4A4 `paper` on `select`
    (three seeds), within noise, and still behind noise refined for the generator's seconds (same section).

    Where the defaults come from: crop_scale and ce_weight were re-checked on the selection split of the
    shared test images with ResNet-20 (two seeds each, `python -m bench.dfq_bench --split select --only
    SETTING --methods gznq --seed S --set "refine.crop_scale=1.0"`, likewise `refine.ce_weight=1.0`;
    docs/benchmarks.md, "Selection on the select split"); that was with the earlier, collapsed generator.
    steps: None (the default) chooses by the setting, `default_refine_steps` (the pipeline knows the bits;
    called without them, as `refine_images` is, None means the steps for 5 bits and more, 10).
    lr and the jitter were chosen before the splits existed, on the whole test set, and have not been
    re-checked."""

    steps: int | None = None
    lr: float = 0.05
    bn_loss: str = "kl"
    bn_weight: float = 1.0
    ce_weight: float = 0.0
    tv_weight: float = 0.0
    max_shift: int = 2
    flip: bool = True
    boundary_share: float = 0.0
    boundary_min: float = 0.5
    crop_scale: float = 0.25
    start_logit_scale: float = 1.0
    spread_weight: float = 0.0
    precision: str = "float32"
    space: str = "pixels"
    weight_lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.bn_loss not in BN_LOSSES:
            raise ValueError(f"unknown BN loss {self.bn_loss!r}; choose one of {', '.join(BN_LOSSES)}")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"refinement steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"refinement lr must be positive, got {self.lr}")
        weights = (self.bn_weight, self.ce_weight, self.tv_weight, self.spread_weight)
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(f"refinement loss weights must be finite and >= 0, got bn_weight={self.bn_weight}, "
                             f"ce_weight={self.ce_weight}, tv_weight={self.tv_weight}, "
                             f"spread_weight={self.spread_weight}")
        if not 0 <= self.boundary_share <= 1 or not 0 <= self.boundary_min <= 1:
            raise ValueError(f"boundary_share and boundary_min must be in [0, 1], got {self.boundary_share} "
                             f"and {self.boundary_min}")
        if self.boundary_share > 0 and self.ce_weight == 0:
            raise ValueError("boundary_share acts through the class loss, which ce_weight=0 turns off; give "
                             "ce_weight > 0 (e.g. 1.0) with it")
        if not (math.isfinite(self.start_logit_scale) and self.start_logit_scale > 0):
            raise ValueError(f"start_logit_scale must be a positive number, got {self.start_logit_scale}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown refinement precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.space not in SPACES:
            raise ValueError(f"unknown refinement space {self.space!r}; choose one of {', '.join(SPACES)}")
        if not (math.isfinite(self.weight_lr) and self.weight_lr >= 0):
            raise ValueError(f"weight_lr must be a finite number >= 0, got {self.weight_lr}")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.space == "generator":
            changed = [f"{k}={getattr(self, k)}" for k in PIXEL_ONLY if getattr(self, k) != defaults[k]]
            if changed:
                raise ValueError(f"{', '.join(changed)} act on pixels; refinement through the generator (space="
                                 f"'generator') has none: leave them at their defaults or refine in space='pixels'")
        elif self.weight_lr != defaults["weight_lr"]:
            raise ValueError(f"weight_lr={self.weight_lr} is the rate of the generator's weights when refining "
                             f"through it: give space='generator' (--refine-space generator) with it, or leave it out")
        if not 0 < self.crop_scale <= 1:
            raise ValueError(f"crop_scale is the smallest share of an image a start crop keeps, in (0, 1]; "
                             f"got {self.crop_scale}")


def default_refine_steps(w_bits: int, a_bits: int) -> int:
    """Refinement steps per batch for a setting, where the user leaves them open: 10 at 5 bits and more, 64 at
    4 bits, 50 at 3 bits and fewer. The narrower of the two widths decides (W8A4 gets 4 bits' 64), and the
    protocol does not enter: both were chosen under `paper` only.

    4 bits (W4A4 `paper`, select half of the shared test images, `python -m bench.dfq_bench --split select
    --only W4A4:paper --methods gznq --generator G --set refine.steps=N --seed S`): with ResNet-20 and its
    generator (the instance of 2026-12-01, later lost), 64 steps lost 0.33 +- 0.16 less than 10 (five seeds, paired; better on four, level on
    one); 30 steps lost 0.35 +- 0.27 less over four seeds but were better on two and worse on two, so 64, the
    consistent one, at about twice 30's refinement time. With ResNet-32 and its generator 64 steps lost 0.51
    against 10 steps' 0.87 on the mean, -0.37 +- 0.21 paired (three seeds; better on two, level on one);
    30 was not tried there (docs/benchmarks.md, "Feature spread tested as a cause" and "Refinement steps at
    4 bits, and refinement in bfloat16").
    3 bits: with a generator of today's options (`runs/gen_bench400/p_cbn800`), seeds 0 and 1, W3A3 `paper`
    lost 3.46 at 10 steps and 2.74 at 50 (100 steps with the shipped generator: better on one seed, worse on the
    other; "The generator re-made"). 64 against 50 with `runs/generator_r20_v2`, seeds 0 to 2: no difference
    resolved, -0.03 +- 0.42 ("Design changes tried on `select`").
    5 bits and more: not measured; they keep the 10 steps that were the choice for 4 bits and more before 4
    bits' own measurement above."""
    low = min(w_bits, a_bits)
    return 50 if low <= 3 else 64 if low == 4 else 10


def steps_of(config: RefineConfig) -> int:
    """The config's steps, or where they were left open (None) those of a setting at 5 bits and more."""
    return default_refine_steps(8, 8) if config.steps is None else config.steps


def boundary_targets(labels: torch.Tensor, num_classes: int, share: float, low: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Class probabilities (B, num_classes): one-hot `labels`, except for round(share * B) rows chosen at
    random, which get lam on their label and 1 - lam on another class drawn uniformly, lam ~ U(low, 1)."""
    targets = F.one_hot(labels, num_classes).float()
    k = round(share * len(labels))
    if k == 0 or num_classes < 2:
        return targets
    rows = torch.randperm(len(labels), generator=generator)[:k].to(labels.device)
    offset = torch.randint(1, num_classes, (k,), generator=generator).to(labels.device)
    other = (labels[rows] + offset) % num_classes
    lam = (low + (1 - low) * torch.rand(k, generator=generator)).to(targets.device)
    targets[rows] = lam[:, None] * targets[rows] + (1 - lam[:, None]) * F.one_hot(other, num_classes).float()
    return targets


def within_class_similarity(features: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity of the pairs of distinct rows of `features` (B, D) that share a class in
    `classes` (B,), class indices; averaged over the classes that have two rows or more, 0 (with a gradient
    of zero) where no class has two. Lower is more spread within classes. No Python loop over the classes: it
    runs on every refinement step."""
    if classes.dtype.is_floating_point or classes.shape != features.shape[:1]:
        raise ValueError(f"within_class_similarity needs one class index per row of features: got classes of "
                         f"dtype {classes.dtype}, shape {tuple(classes.shape)}, for features {tuple(features.shape)}")
    unit = F.normalize(features.flatten(1), dim=1)
    _, index = classes.unique(return_inverse=True)
    size = torch.bincount(index).to(unit.dtype)  # rows of each class present
    same = (index[:, None] == index[None, :]).to(unit.dtype)
    pair_sums = ((unit @ unit.T) * same).sum(1) - (unit * unit).sum(1)  # over the other rows of one's class
    class_sums = torch.zeros_like(size).index_add(0, index, pair_sums)
    pairs = size * (size - 1)  # ordered pairs of distinct rows within each class
    kept = pairs > 0
    per_class = torch.where(kept, class_sums / pairs.clamp_min(1), torch.zeros_like(pairs))
    return per_class.sum() / kept.sum().clamp_min(1)


def check_precision(config: RefineConfig, device: torch.device) -> None:
    """Refuse a refinement precision the device cannot run: bfloat16 needs a CPU or a GPU with native
    bfloat16 (emulated, it is slower than float32)."""
    if config.precision != "bfloat16":
        return
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"bfloat16 refinement runs on a CPU or a CUDA GPU, not on {device.type}; refine in "
                         "float32 (--refine-precision float32)")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ValueError("this GPU has no native bfloat16; refine in float32 (--refine-precision float32)")


def optimize_logits(
    teacher: nn.Module,
    spec: InputSpec,
    logits: torch.Tensor,
    labels: torch.Tensor,
    config: RefineConfig,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """Optimize pixel logits (images are sigmoid(logits)) of one batch for `config.steps` Adam steps against
    the BN loss of the whole batch plus, with `config.ce_weight`, the teacher's cross-entropy on `labels`
    (class indices, or class probabilities of shape (B, classes)) and, with `config.spread_weight`, the
    within-class similarity of the teacher's penultimate features, the classes being the teacher's own
    predictions at that step (so that it needs no labels the teacher agrees with). The teacher must be in
    eval mode with frozen parameters.

    Returns:
        (images in [0, 1], detached; the last step's loss, or nan for 0 steps).
    """
    steps = steps_of(config)
    logits = logits.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = refinement_loss(teacher, spec, torch.sigmoid(logits), labels, config, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return torch.sigmoid(logits.detach()), float(loss.detach())


def refinement_loss(teacher: nn.Module, spec: InputSpec, x: torch.Tensor, labels: torch.Tensor, config: RefineConfig,
                    *, generator: torch.Generator | None = None) -> torch.Tensor:
    """One refinement step's loss of images `x` in [0, 1]: jittered (`generator` draws the jitter), through the
    teacher (under autocast where `config.precision` asks), the weighted BN loss of the whole batch, within-class
    spread, cross-entropy on `labels` and total variation, each where its weight is not 0."""
    jittered = random_jitter(x, max_shift=scaled_shift(config.max_shift, x.shape[-1]), flip=config.flip,
                             generator=generator)
    spread = capture_penultimate(teacher, detach=False) if config.spread_weight else contextlib.nullcontext()
    dtype = PRECISIONS[config.precision]
    cast = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with BNStatsRecorder(teacher) as rec, spread as features, cast:
        out = teacher(normalize(jittered, spec.mean, spec.std))
    out = at_least_float32(out)
    loss = config.bn_weight * BN_LOSSES[config.bn_loss](rec.stats)
    if config.spread_weight:
        loss = loss + config.spread_weight * within_class_similarity(at_least_float32(features[-1]),
                                                                     out.detach().argmax(1))
    if config.ce_weight:
        loss = loss + config.ce_weight * F.cross_entropy(out, labels)
    if config.tv_weight:
        loss = loss + config.tv_weight * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
                                          + (x[..., 1:] - x[..., :-1]).abs().mean())
    return loss


def refine_images(
    teacher: nn.Module,
    spec: InputSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: RefineConfig = RefineConfig(),
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Refine a batch of images in [0, 1] (B, C, H, W) for the teacher; returns refined images in [0, 1].
    The teacher's modes and parameters' requires_grad are restored afterwards.

    Raises:
        ValueError: images outside [0, 1] (normalized images must be un-normalized first), a batch of one
            (a batch's statistics need at least two images) or a precision the device cannot run.
    """
    if not torch.isfinite(images).all():
        raise ValueError("refine_images got non-finite pixels (NaN or inf); check the generator's weights")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("refine_images takes pixels in [0, 1], not normalized images")
    if len(images) < 2:
        raise ValueError("refinement matches a batch's BatchNorm statistics; it needs at least 2 images")
    if steps_of(config) == 0:
        return images
    check_precision(config, images.device)
    eps = 1e-4  # keeps the logits of saturated pixels finite
    with frozen(teacher), torch.enable_grad():
        targets = labels
        if config.boundary_share > 0:
            targets = boundary_targets(labels, spec.num_classes, config.boundary_share, config.boundary_min,
                                       generator)
        if config.crop_scale < 1:
            images = random_resized_crop(images, scale=(config.crop_scale, 1.0), generator=generator)
        start = torch.logit(images.clamp(eps, 1 - eps)) * config.start_logit_scale
        refined, _ = optimize_logits(teacher, spec, start, targets, config,
                                     generator=generator)
    if not torch.isfinite(refined).all():
        raise ValueError("refinement produced non-finite pixels; lower the refinement lr")
    return refined


class RefinedBatches:
    """Iterable over `batches` of (images in [0, 1], labels) that yields (refined images, labels), normalized
    with the teacher's mean and std unless `normalized=False`: each batch is refined for the teacher with
    `config` (seeded jitter, so a run repeats exactly)."""

    def __init__(self, batches: Iterable, teacher: nn.Module, spec: InputSpec, config: RefineConfig, *,
                 seed: int = 0, normalized: bool = True) -> None:
        self.batches, self.teacher, self.spec, self.config, self.seed = batches, teacher, spec, config, seed
        self.normalized = normalized

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = torch.Generator().manual_seed(self.seed)
        for images, labels in self.batches:
            refined = refine_images(self.teacher, self.spec, images, labels, self.config, generator=rng)
            yield (normalize(refined, self.spec.mean, self.spec.std) if self.normalized else refined), labels
