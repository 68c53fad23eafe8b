"""Block-wise reconstruction (AdaRound / BRECQ style): block by block, make the quantized student's output
match the full-precision teacher's on a set of (synthetic) images, learning the weight rounding and the
activation step sizes."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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
    `docs/benchmarks.md`).

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
        if not 0 <= self.feature_mix <= 1 or not 0 <= self.feature_mix_after <= 1:
            raise ValueError(f"feature_mix and feature_mix_after must be in [0, 1], got {self.feature_mix} "
                             f"and {self.feature_mix_after}")


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the units reconstructed one at a time, in module order: every element of an nn.Sequential
    that holds quantized layers (a residual block, a conv-BN-act unit) unless it is itself a sequence of
    several such units (a ResNet stage), and every quantized layer outside such elements (a stem conv)."""
    blocks: list[str] = []

    def holds_quant(m: nn.Module) -> bool:
        return any(isinstance(x, _QUANT_LAYERS) for x in m.modules())

    def is_stage(m: nn.Module) -> bool:
        return isinstance(m, nn.Sequential) and sum(holds_quant(c) for c in m.children()) > 1

    def visit(module: nn.Module, prefix: str, in_sequential: bool) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if not holds_quant(child):
                continue
            if isinstance(child, _QUANT_LAYERS) or (in_sequential and not is_stage(child)):
                blocks.append(full)
            else:
                visit(child, f"{full}.", isinstance(child, nn.Sequential))

    visit(model, "", isinstance(model, nn.Sequential))
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


@torch.no_grad()
def _collect(model: nn.Module, block: nn.Module, images: list[torch.Tensor], *, output: bool) -> torch.Tensor:
    """The block's input (or output) for every image batch; the forward pass stops at the block for inputs."""
    chunks = []
    for x in images:
        with _capture(block, output=output) as store:
            if output:
                model(x)
            else:
                stopper = block.register_forward_pre_hook(lambda m, i: (_ for _ in ()).throw(_StopForward()))
                try:
                    with contextlib.suppress(_StopForward):
                        model(x)
                finally:
                    stopper.remove()
        chunks.append(store[0])
    return torch.cat(chunks)


@torch.no_grad()
def _collect_io(model: nn.Module, block: nn.Module, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's input and output for every image batch, both from one forward pass per batch."""
    inputs, outputs = [], []
    for x in images:
        with _capture(block, output=False) as block_in, _capture(block, output=True) as block_out:
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


def reconstruct_block(
    block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, config: ReconstructConfig,
    mix: FeatureMix | None = None,
) -> BlockResult:
    """Optimize one block's weight rounding and activation steps so that block(inputs) matches targets
    (with `mix`, also on blends of the inputs, config.feature_mix ignored: the caller decides)."""
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
            for it in range(config.iterations):
                idx = torch.randint(len(inputs), (config.batch_size,), generator=gen)
                x, y = _batch(inputs, targets, idx, mix, gen)
                loss = reconstruction_loss(block(x), y)
                progress = it / config.iterations
                if progress >= config.warmup and roundings:
                    beta = _beta(progress, config)
                    loss = loss + config.reg_weight * sum(r.regularizer(beta) for r in roundings)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for q in act_quantizers:
                        q.scale.clamp_(min=1e-8)
            total = sum(r.w_floor.numel() for r in roundings)
            undecided = sum(r.undecided() for r in roundings) / total if total else 0.0
    finally:
        for q in act_quantizers:
            q.set_learnable(False)
    return BlockResult(before, _block_error(block, inputs, targets), undecided)


@torch.no_grad()
def _block_error(block: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> float:
    total = 0.0
    with restored(block):
        block.eval()
        for i in range(0, len(inputs), chunk):
            total += F.mse_loss(block(inputs[i:i + chunk]), targets[i:i + chunk], reduction="sum").item()
    return total / len(inputs)


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
    on the full-precision path.

    Args:
        images: batches of normalized images (the reconstruction set, e.g. 1,024 generated images).

    Returns:
        One record per block: its name and its BlockResult fields.

    Raises:
        ValueError: a student block has no counterpart in the teacher, or there is nothing to reconstruct.
    """
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
            mix = None
            if config.feature_mix > 0 and number >= config.feature_mix_after * len(blocks):
                teacher_inputs, targets = _collect_io(teacher, teacher_block, images)
                mix = FeatureMix(teacher_block, teacher_inputs, config.feature_mix)
            else:
                targets = _collect(teacher, teacher_block, images, output=True)
            inputs = _collect(student, block, images, output=False)
            if inputs.dim() == 4:  # channels-last convolutions run 2x faster here on small CPU batches
                block.to(memory_format=torch.channels_last)
                inputs = inputs.contiguous(memory_format=torch.channels_last)
                targets = targets.contiguous(memory_format=torch.channels_last)
            result = reconstruct_block(block, inputs, targets, config, mix)
            records.append({"block": name, **dataclasses.asdict(result)})
            if inputs.dim() == 4:  # back to the default layout, so the student computes as a reloaded copy does
                block.to(memory_format=torch.contiguous_format)
    return records
