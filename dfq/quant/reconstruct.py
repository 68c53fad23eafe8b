"""Block-wise reconstruction (AdaRound / BRECQ style): block by block, make the quantized student's output
match the full-precision teacher's on a set of (synthetic) images, learning the weight rounding and the
activation step sizes."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dfq import distributed
from dfq.modes import frozen, restored
from dfq.quant.adaround import adaround
from dfq.quant.modules import QuantConv2d, QuantLinear

_QUANT_LAYERS = (QuantConv2d, QuantLinear)


@dataclass(frozen=True)
class ReconstructConfig:
    """iterations: optimizer steps per block. batch_size: images per step. lr: Adam rate of the rounding
    variables, sized for a few hundred iterations: each step moves a rounding variable by at most about lr,
    and it has to travel a few units to settle its rounding (BRECQ's 1e-3 is meant for 20,000 iterations;
    at a few hundred it leaves most weights rounded to nearest). act_lr: Adam rate of the activation step
    sizes (0 keeps them fixed). reg_weight, beta_start, beta_end, warmup: AdaRound's rounding regularizer,
    its annealed exponent, and the fraction of iterations before it starts. drop_prob: QDrop (Wei et al.
    2022): while reconstructing, each activation element skips its quantization with this probability,
    which flattens the loss landscape and generalizes from few reconstruction images to unseen ones; 0 turns
    it off. last_block: reconstruct the last unit too (the classifier, whose output is the logits); False
    leaves it with its calibrated, round-to-nearest weights; None reconstructs it here and lets the pipeline
    choose by the setting (`dfq.quant.recon_defaults`). feature_mix: share of each batch whose block inputs
    are blends lam * a + (1 - lam) * b of two inputs of the batch (lam ~ U(0, 1)), the target being the
    teacher block's output on the same blend of the teacher's inputs, meant to stand in for intermediate
    features that generated images lack; only in blocks past the fraction `feature_mix_after` of the list,
    as early features are local textures that blending only ghosts. Off by default (it did not help in
    `docs/benchmarks.md`). memory_mb: the most a block's held inputs and targets may take; where all the
    images' do not fit (ImageNet-size models), the block is reconstructed on a pool of as many images as fit,
    drawn afresh for each of ceil(images / pool) equal parts of its iterations (its errors before and after
    are then measured on the first pool). CIFAR ResNets at 2,048 images x 3 copies stay under the default.

    Where the defaults come from: lr was re-checked on the selection split of the shared test images with
    ResNet-20 (`python -m bench.dfq_bench --split select --only SETTING --methods gznq --seed S --set
    "recon.lr=0.05"`, two seeds; docs/benchmarks.md, "Selection on the select split"); the other values
    were chosen before the splits existed, on the whole test set, and have not been re-checked."""

    iterations: int = 500
    batch_size: int = 32
    lr: float = 1e-1
    act_lr: float = 4e-5
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    drop_prob: float = 0.5
    last_block: bool | None = None
    feature_mix: float = 0.0
    feature_mix_after: float = 0.5
    memory_mb: float = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError("iterations and batch_size must be positive")
        if self.lr <= 0 or self.act_lr < 0 or self.reg_weight < 0 or min(self.beta_start, self.beta_end) <= 0:
            raise ValueError(f"reconstruction needs lr > 0, act_lr >= 0, reg_weight >= 0 and positive betas, got "
                             f"lr={self.lr}, act_lr={self.act_lr}, reg_weight={self.reg_weight}, "
                             f"betas {self.beta_start}->{self.beta_end}")
        if not 0 <= self.drop_prob < 1:
            raise ValueError(f"drop_prob must be in [0, 1), got {self.drop_prob}")
        if not 0 <= self.warmup < 1:
            raise ValueError("warmup must be in [0, 1)")
        if not self.memory_mb > 0:
            raise ValueError(f"memory_mb must be positive, got {self.memory_mb}")
        if not 0 <= self.feature_mix <= 1 or not 0 <= self.feature_mix_after <= 1:
            raise ValueError(f"feature_mix and feature_mix_after must be in [0, 1], got {self.feature_mix} "
                             f"and {self.feature_mix_after}")


_CONTAINERS = (nn.Sequential, nn.ModuleList)


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the units reconstructed one at a time, in module order: the elements of a stage that hold
    quantized layers (residual blocks, conv-BN-act units), unless they are stages themselves, and every quantized
    layer outside them (a stem conv, the classifier); other modules are looked into.

    A stage is a Sequential or ModuleList with more than one element holding quantized layers (a ResNet stage),
    or a plain module whose parts (its children, looking through Sequential and ModuleList) include at least two
    that hold two or more quantized layers each (a stage of blocks kept as attributes, RegNet's; a network whose
    stages are its attributes). A ModuleDict is never a stage: its forward is its own (DenseNet's dense blocks
    hand lists of tensors to their layers), so an element of a stage that is a ModuleDict is one unit.
    """
    blocks: list[str] = []

    def count_quant(m: nn.Module) -> int:
        return sum(isinstance(x, _QUANT_LAYERS) for x in m.modules())

    def parts(m: nn.Module):
        for c in m.children():
            if count_quant(c) == 0:
                continue
            if isinstance(c, _CONTAINERS):
                yield from parts(c)
            else:
                yield c

    def is_stage(m: nn.Module) -> bool:
        if isinstance(m, nn.ModuleDict):
            return False
        if isinstance(m, _CONTAINERS):
            return sum(count_quant(c) > 0 for c in m.children()) > 1
        return sum(count_quant(p) >= 2 for p in parts(m)) >= 2

    def visit(module: nn.Module, prefix: str) -> None:
        units_here = isinstance(module, _CONTAINERS) or is_stage(module)
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if count_quant(child) == 0:
                continue
            if isinstance(child, _QUANT_LAYERS) or (units_here and not is_stage(child)):
                blocks.append(full)
            else:
                visit(child, f"{full}.")

    visit(model, "")
    return blocks


@contextlib.contextmanager
def _capture(module: nn.Module, *, output: bool):
    store: list[torch.Tensor] = []
    if output:
        handle = module.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    else:
        handle = module.register_forward_pre_hook(lambda m, i: store.append(i[0].detach()))
    try:
        yield store
    finally:
        handle.remove()


@contextlib.contextmanager
def activation_drop(quantizers: list[nn.Module], prob: float, generator: torch.Generator):
    """Within the block, each element passing through one of `quantizers` keeps its float value with
    probability `prob` (QDrop); the hooks are removed on exit."""

    def hook(module, inputs, output):
        keep_float = torch.rand(output.shape, generator=generator).to(output.device) < prob
        return torch.where(keep_float, inputs[0], output)

    handles = [q.register_forward_hook(hook) for q in quantizers] if prob > 0 else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _StopForward(Exception):
    pass


def _raise_stop(*_):
    raise _StopForward


@contextlib.contextmanager
def _stop_after(block: nn.Module, *, output: bool):
    """End the model's forward pass as soon as `block` has run (output) or is about to run (input): nothing
    after it is needed."""
    handle = block.register_forward_hook(_raise_stop) if output else block.register_forward_pre_hook(_raise_stop)
    try:
        with contextlib.suppress(_StopForward):
            yield
    finally:
        handle.remove()


@torch.no_grad()
def _collect(model: nn.Module, block: nn.Module, images: list[torch.Tensor], *, output: bool) -> torch.Tensor:
    """The block's input (or output) for every image batch; each forward pass stops at the block."""
    chunks = []
    for x in images:
        with _capture(block, output=output) as store:
            with _stop_after(block, output=output):
                model(x)
        chunks.append(store[0])
    return torch.cat(chunks)


@torch.no_grad()
def _collect_io(model: nn.Module, block: nn.Module, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's input and output for every image batch, both from one forward pass per batch (which stops
    after the block)."""
    inputs, outputs = [], []
    for x in images:
        with _capture(block, output=False) as block_in, _capture(block, output=True) as block_out:
            with _stop_after(block, output=True):
                model(x)
        inputs.append(block_in[0])
        outputs.append(block_out[0])
    return torch.cat(inputs), torch.cat(outputs)


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels (dim 1) and averaged over the batch and any spatial positions,
    as BRECQ measures it: its size does not grow with the feature map, so one rounding-regularizer weight
    suits every block."""
    return (output - target).pow(2).sum(1).mean()


def _beta(progress: float, config: ReconstructConfig) -> float:
    """Exponent of the rounding regularizer: annealed from beta_start to beta_end after the warm-up."""
    t = (progress - config.warmup) / (1 - config.warmup)
    return config.beta_end + (config.beta_start - config.beta_end) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass(frozen=True)
class BlockResult:
    """One block's reconstruction. mse_before, mse_after: output error per image on the reconstruction
    inputs, with hard rounding. undecided: share of the block's weights whose soft rounding was still more
    than 0.1 away from both grid neighbours when the hard choice was made (near 0 when the budget and `lr`
    let the optimization settle; near 1 means the result is close to plain rounding to nearest)."""

    mse_before: float
    mse_after: float
    undecided: float


@dataclass(frozen=True)
class FeatureMix:
    """What blending block inputs needs: the teacher's block and its inputs (aligned with the student's)."""

    teacher_block: nn.Module
    teacher_inputs: torch.Tensor
    share: float


def _batch(inputs: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor, mix: FeatureMix | None,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's inputs and the targets for one step; with `mix`, its first share of the batch blended."""
    x, y = inputs[idx], targets[idx]
    k = round(mix.share * len(idx)) if mix is not None else 0
    if k == 0:
        return x, y
    other = idx[torch.randint(len(idx), (k,), generator=gen)]
    lam = torch.rand((k,) + (1,) * (x.dim() - 1), generator=gen).to(x.device)
    x = torch.cat([lam * x[:k] + (1 - lam) * inputs[other], x[k:]])
    with torch.no_grad():
        t_in = lam * mix.teacher_inputs[idx[:k]] + (1 - lam) * mix.teacher_inputs[other]
        y = torch.cat([mix.teacher_block(t_in), y[k:]])
    return x, y


BlockData = tuple[torch.Tensor, torch.Tensor, "FeatureMix | None"]


def reconstruct_block(
    block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, config: ReconstructConfig,
    mix: FeatureMix | None = None,
) -> BlockResult:
    """Optimize one block's weight rounding and activation steps so that block(inputs) matches targets
    (with `mix`, also on blends of the inputs, config.feature_mix ignored: the caller decides)."""
    return _reconstruct_block(block, lambda part: (inputs, targets, mix), 1, config)


def _reconstruct_block(block: nn.Module, collect: Callable[[int], BlockData], rounds: int,
                       config: ReconstructConfig) -> BlockResult:
    """`reconstruct_block` on data made on demand: the iterations split into `rounds` equal parts, part r on
    collect(r), the errors before and after on collect(0). Only this function holds the data, and it lets go
    of one part's before collecting the next, so that one part is held at a time."""
    inputs, targets, mix = collect(0)
    layers = [m for m in block.modules() if isinstance(m, _QUANT_LAYERS) and m.weight_quantizer is not None]
    # a quantizer shared by several layers (dfq.quant.graph.tie_shared_inputs) is listed once
    act_quantizers = list({id(m.input_quantizer): m.input_quantizer for m in block.modules()
                           if isinstance(m, _QUANT_LAYERS) and m.input_quantizer is not None}.values())
    before = _block_error(block, inputs, targets)
    gen = torch.Generator().manual_seed(config.seed)
    try:
        with frozen(block), adaround(layers) as roundings, activation_drop(act_quantizers, config.drop_prob, gen):
            groups = [{"params": [r.alpha for r in roundings], "lr": config.lr}]
            if config.act_lr > 0 and act_quantizers:
                for q in act_quantizers:
                    q.set_learnable(True)
                groups.append({"params": [q.scale for q in act_quantizers], "lr": config.act_lr})
            opt = torch.optim.Adam(groups)
            part = 0
            for it in range(config.iterations):
                if it * rounds // config.iterations != part:
                    part = it * rounds // config.iterations
                    inputs = targets = mix = x = y = loss = None  # the previous part is freed before the next
                    inputs, targets, mix = collect(part)
                idx = torch.randint(len(inputs), (config.batch_size,), generator=gen)
                x, y = _batch(inputs, targets, idx, mix, gen)
                loss = reconstruction_loss(block(x), y)
                progress = it / config.iterations
                if progress >= config.warmup and roundings:
                    beta = _beta(progress, config)
                    loss = loss + config.reg_weight * sum(r.regularizer(beta) for r in roundings)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(p for g in groups for p in g["params"])  # several processes
                opt.step()
                with torch.no_grad():
                    for q in act_quantizers:
                        q.scale.clamp_(min=1e-8)
            total = sum(r.w_floor.numel() for r in roundings)
            undecided = sum(r.undecided() for r in roundings) / total if total else 0.0
    finally:
        for q in act_quantizers:
            q.set_learnable(False)
    if part != 0:
        inputs = targets = mix = x = y = loss = None
        inputs, targets, mix = collect(0)
    return BlockResult(before, _block_error(block, inputs, targets), undecided)


@torch.no_grad()
def _block_error(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> float:
    total = 0.0
    with restored(block):
        block.eval()
        for i in range(0, len(inputs), chunk):
            total += F.mse_loss(block(inputs[i:i + chunk]), targets[i:i + chunk], reduction="sum").item()
    return total / len(inputs)


@torch.no_grad()
def _runs(model: nn.Module, block: nn.Module, x: torch.Tensor) -> bool:
    """Whether `model`'s forward on `x` reaches `block`."""
    with _capture(block, output=False) as store, _stop_after(block, output=False):
        model(x)
    return bool(store)


def _count(images: list[torch.Tensor]) -> int:
    return sum(len(x) for x in images)


def _pool_size(student, teacher, block, teacher_block, images, config: ReconstructConfig,
               mixing: bool) -> tuple[int | None, bool]:
    """How many images' block inputs and targets fit in `config.memory_mb` (None: all of them), from one image's;
    and whether the block's input is a 4-d feature map."""
    one = [images[0][:1]]
    block_input = _collect(student, block, one, output=False)
    held = block_input.numel() + _collect(teacher, teacher_block, one, output=True).numel()
    if mixing:
        held += _collect(teacher, teacher_block, one, output=False).numel()
    per_image = held * images[0].element_size()
    fit = int(config.memory_mb * 2**20 // per_image)
    four_d = block_input.dim() == 4
    if fit >= _count(images):
        return None, four_d
    if fit < config.batch_size:
        raise ValueError(f"reconstruction's memory_mb ({config.memory_mb:g} MB) holds {fit} images' block inputs and "
                         f"targets ({per_image / 2**20:.1f} MB each), fewer than one batch ({config.batch_size}); "
                         "raise memory_mb or lower the batch size")
    return fit, four_d


def _pool_images(images: list[torch.Tensor], pool: int, part: int, seed: int) -> list[torch.Tensor]:
    """Part 0: the first `pool` images; part r > 0: `pool` images drawn without replacement (seeded by r)."""
    if part == 0:
        return first_images(images, pool)
    flat_index = torch.randperm(_count(images), generator=torch.Generator().manual_seed(seed * 100003 + part))[:pool]
    starts = torch.tensor([0] + [len(x) for x in images]).cumsum(0)
    picked = []
    for i in flat_index.sort().values.tolist():
        b = int(torch.searchsorted(starts, i, right=True)) - 1
        picked.append(images[b][i - starts[b]])
    return [torch.stack(picked[j:j + len(images[0])]) for j in range(0, len(picked), len(images[0]))]


def first_images(batches: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first `n` images of `batches`, in the same batches (the last one cut short): a reconstruction
    set taken from a calibration set.

    Raises:
        ValueError: the batches hold fewer than `n` images.
    """
    out, left = [], n
    for x in batches:
        if left <= 0:
            break
        out.append(x[:left])
        left -= len(out[-1])
    if left > 0:
        raise ValueError(f"asked for the first {n} images of batches that hold {n - left}")
    return out


def reconstruct(
    student: nn.Module,
    teacher: nn.Module,
    images: list[torch.Tensor],
    config: ReconstructConfig = ReconstructConfig(),
    *,
    progress: bool = False,
) -> list[dict]:
    """Reconstruct the blocks of a calibrated `student` (from `quantize_model` on `teacher`), in order (the
    last one only with `config.last_block`, or when it is the only one): each block's input comes from the
    student with the blocks before it already reconstructed, its target from the teacher's same-named block
    on the full-precision path. Where several processes reconstruct together (`dfq.distributed`), each passes
    its own images (as many as every other) and the gradients are averaged, so that all keep the same student.

    Args:
        images: batches of normalized images (the reconstruction set, e.g. 1,024 generated images).

    Returns:
        One record per block: its name and its BlockResult fields.

    Raises:
        ValueError: a student block has no counterpart in the teacher, or there is nothing to reconstruct; processes
            holding different numbers of images.
    """
    if distributed.is_distributed():
        count = torch.tensor([_count(images)], device=images[0].device)  # NCCL reduces GPU tensors only
        if distributed.all_reduce(count, "min") != distributed.all_reduce(count, "max"):
            raise ValueError("every process must reconstruct on as many images as the others (they step together)")
    blocks = find_blocks(student)
    if not blocks:
        raise ValueError("the student has no quantized layers to reconstruct; build it with dfq.quantize_model")
    if config.last_block is False and len(blocks) > 1:
        blocks = blocks[:-1]
    teacher_modules = dict(teacher.named_modules())
    records = []
    with restored(student), frozen(teacher):
        student.eval()
        for number, name in enumerate(tqdm(blocks, desc="reconstruct", disable=not progress)):
            if name not in teacher_modules:
                raise ValueError(f"student block {name!r} has no counterpart in the teacher")
            block, teacher_block = student.get_submodule(name), teacher_modules[name]
            mixing = config.feature_mix > 0 and number >= config.feature_mix_after * len(blocks)
            # e.g. an auxiliary head used only in training (decided by all processes together: they step together)
            if distributed.all_true(not _runs(student, block, images[0][:1])):
                records.append({"block": name, "skipped": "not run by the model's forward in eval mode"})
                continue
            pool, four_d = _pool_size(student, teacher, block, teacher_block, images, config, mixing)

            def collect(part: int, block=block, teacher_block=teacher_block, pool=pool, mixing=mixing) -> BlockData:
                subset = images if pool is None else _pool_images(images, pool, part, config.seed)
                mix = None
                if mixing:
                    teacher_inputs, targets = _collect_io(teacher, teacher_block, subset)
                    mix = FeatureMix(teacher_block, teacher_inputs, config.feature_mix)
                else:
                    targets = _collect(teacher, teacher_block, subset, output=True)
                inputs = _collect(student, block, subset, output=False)
                if inputs.dim() == 4:  # channels-last convolutions run 2x faster here on small CPU batches
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                if targets.dim() == 4:
                    targets = targets.contiguous(memory_format=torch.channels_last)
                return inputs, targets, mix

            if four_d:
                block.to(memory_format=torch.channels_last)
            rounds = 1 if pool is None else min(config.iterations, -(-_count(images) // pool))
            result = _reconstruct_block(block, collect, rounds, config)
            records.append({"block": name, **dataclasses.asdict(result), "pool": pool or _count(images)})
            # back to the default layout, so the student computes as a reloaded copy does
            block.to(memory_format=torch.contiguous_format)
    return records
