"""Top-1/top-5 of a classifier on real images, optionally beside its teacher in the same pass."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from dfq import distributed
from dfq.losses import kd_loss
from dfq.modes import restored


@dataclass
class EvalResult:
    """Accuracies in percent. The teacher fields are set when a teacher was evaluated alongside."""

    top1: float
    top5: float
    num_images: int
    seconds: float
    teacher_top1: float | None = None
    teacher_top5: float | None = None
    agreement: float | None = None  # % of images where model and teacher predict the same class
    drop: float | None = None  # teacher top-1 minus model top-1, in points, from the counts (no float residue)
    # the drop's two parts (drop = broken - fixed): % of images the teacher gets right and the model wrong,
    # and % the teacher gets wrong and the model right
    broken: float | None = None
    fixed: float | None = None
    output_kl: float | None = None  # mean KL(teacher's softmax || model's), nats per image: fidelity to the teacher

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _correct_topk(logits: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[int, int]:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (B, k)
    hits = top.eq(labels[:, None])
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    teacher: nn.Module | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> EvalResult:
    """Evaluate `model` on (images, labels) batches; with `teacher`, also the teacher and the top-1
    agreement between the two, on the same images in the same pass.

    Both models are put in eval mode for the pass and returned to their previous mode after it. Inputs go
    to the device of the model's parameters. Where several processes evaluate together (`dfq.distributed`),
    each passes its own shard of the images (`build_eval_loader` shards them) and every process returns the
    figures of all of them.

    Raises:
        ValueError: the batches are empty.
    """
    device = _device_of(model)
    n = top1 = top5 = t_top1 = t_top5 = agree = broken = fixed = 0
    kl = 0.0
    start = time.perf_counter()
    with restored(model), restored(teacher) if teacher is not None else contextlib.nullcontext():
        model.eval()
        if teacher is not None:
            teacher.eval()
        total = len(batches.dataset) if hasattr(batches, "dataset") else None
        bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), labels.to(device)
            logits = model(images)
            c1, c5 = _correct_topk(logits, labels, 5)
            top1, top5, n = top1 + c1, top5 + c5, n + labels.numel()
            if teacher is not None:
                t_logits = teacher(images)
                c1, c5 = _correct_topk(t_logits, labels, 5)
                t_top1, t_top5 = t_top1 + c1, t_top5 + c5
                predicted, t_predicted = logits.argmax(1), t_logits.argmax(1)
                agree += int(predicted.eq(t_predicted).sum())
                right, t_right = predicted.eq(labels), t_predicted.eq(labels)
                broken += int((t_right & ~right).sum())
                fixed += int((~t_right & right).sum())
                kl += kd_loss(logits.float(), t_logits.float(), 1.0).item() * labels.numel()
            bar.update(labels.numel())
            bar.set_postfix(top1=f"{100 * top1 / n:.2f}")
        bar.close()
    if distributed.is_distributed():  # each process evaluated its shard: the counts of all images are the sums
        counts = distributed.all_reduce(torch.tensor([n, top1, top5, t_top1, t_top5, agree, broken, fixed],
                                                     dtype=torch.long, device=device), "sum")
        n, top1, top5, t_top1, t_top5, agree, broken, fixed = counts.tolist()
        kl = distributed.all_reduce(torch.tensor([kl], dtype=torch.float64, device=device), "sum").item()
    if n == 0:
        raise ValueError("no images to evaluate: the batches were empty")
    seconds = time.perf_counter() - start
    result = EvalResult(top1=100 * top1 / n, top5=100 * top5 / n, num_images=n, seconds=seconds)
    if teacher is not None:
        result.teacher_top1 = 100 * t_top1 / n
        result.teacher_top5 = 100 * t_top5 / n
        result.agreement = 100 * agree / n
        result.drop = 100 * (t_top1 - top1) / n
        result.broken, result.fixed = 100 * broken / n, 100 * fixed / n
        result.output_kl = kl / n
    return result
