"""The distillation stage of `train.py quantize --method ...,distill`: data, checkpoints, logs, resume."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dfq.data import load_dataset
from dfq.distill import Distiller, DistillConfig, gdfq_recipe, run_distillation
from dfq.io import atomic_write
from dfq.models.spec import InputSpec
from dfq.quant import QuantConfig, save_student
from dfq.sources import Source
from generators.checkpoint import load_generator
from generators.network import normalize
from generators.pixel_opt import load_pixels

STATE_FILE = "distill_state.pt"
LOG_FILE = "distill_log.csv"
RECIPES = ("gznq", "gdfq")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DistillConfig()
    p.add_argument("--recipe", default="gznq", choices=RECIPES,
                   help="distillation recipe: ours (gznq) or the published GDFQ hyperparameters (gdfq)")
    p.add_argument("--distill-steps", type=int, default=d.steps)
    p.add_argument("--distill-batch-size", type=int, default=d.batch_size)
    p.add_argument("--distill-lr", type=float, default=d.lr)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--mix-fraction", type=float, default=d.mix_fraction,
                   help="share of each student batch replaced by blends of two images")
    p.add_argument("--adversarial-weight", type=float, default=d.adversarial_weight)
    p.add_argument("--generator-every", type=int, default=d.generator_every,
                   help="update the generator every N student steps (0: frozen generator)")
    p.add_argument("--distill-weight-scales", action=argparse.BooleanOptionalAction, default=None,
                   help="learn the weight step sizes too (default: only without reconstruction, whose rounding "
                        "of each weight holds for its grid alone; learning them after it cost up to 7 points)")
    p.add_argument("--save-every", type=int, default=200, help="distillation checkpoint interval in steps")
    p.add_argument("--resume", action="store_true", help="continue the distillation saved in --out")


def distill_config(args: argparse.Namespace, *, reconstructed: bool = False) -> DistillConfig:
    """The distillation asked for; `reconstructed`: the student comes from a reconstruction, so its weight
    step sizes stay as they are unless --distill-weight-scales says otherwise."""
    if args.recipe == "gdfq":
        return gdfq_recipe(args.distill_steps, batch_size=args.distill_batch_size, seed=args.seed)
    weight_scales = args.distill_weight_scales
    if weight_scales is None:
        weight_scales = not reconstructed
    return DistillConfig(steps=args.distill_steps, batch_size=args.distill_batch_size, lr=args.distill_lr,
                         temperature=args.temperature, adversarial_weight=args.adversarial_weight,
                         generator_every=args.generator_every, mix_fraction=args.mix_fraction,
                         weight_scales=weight_scales, seed=args.seed)


def _data(source: Source, *, teacher, teacher_name, spec, config: DistillConfig, seed: int):
    """(generator, batches) for the Distiller: exactly one is set."""
    if source.kind == "generator":
        generator, _ = load_generator(source.path, teacher_name=teacher_name, teacher=teacher,
                                      device=next(teacher.parameters()).device)
        return generator, None
    if source.kind == "real":
        ds = load_dataset(source.path, spec, train=True)
        return None, DataLoader(ds, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=2,
                                generator=torch.Generator().manual_seed(seed), persistent_workers=True)
    images, labels, _ = load_pixels(source.path, teacher_name=teacher_name)
    ds = TensorDataset(normalize(images, spec.mean, spec.std), labels)
    return None, DataLoader(ds, batch_size=min(config.batch_size, len(ds)), shuffle=True, drop_last=True,
                            generator=torch.Generator().manual_seed(seed))


def run_distill(args: argparse.Namespace, *, student: nn.Module, teacher: nn.Module, spec: InputSpec,
                source: Source, quant_config: QuantConfig, metadata: dict) -> dict:
    """Distill `student` in place, checkpointing to args.out; returns a record for the report."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = None
    if args.resume:
        path = out / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"nothing to resume in {out}: {STATE_FILE} is missing")
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = DistillConfig(**{**state["config"], "generator_betas": tuple(state["config"]["generator_betas"])})
    else:
        config = distill_config(args, reconstructed="reconstruct" in metadata["method"].split(","))
    generator, batches = _data(source, teacher=teacher, teacher_name=args.model, spec=spec, config=config,
                               seed=args.seed)
    distiller = Distiller(student, teacher, spec, config, generator=generator, batches=batches)
    if state is not None:
        distiller.load_state_dict(state)
    log_path = out / LOG_FILE
    log_file = open(log_path, "a", newline="")
    writer = None

    def on_log(step: int, parts: dict, seconds: float) -> None:
        nonlocal writer
        row = {"step": step, "seconds": round(seconds, 2), **{k: round(v, 6) for k, v in parts.items()}}
        if writer is None:
            writer = csv.DictWriter(log_file, fieldnames=list(row), extrasaction="ignore")
            if log_file.tell() == 0:
                writer.writeheader()
        writer.writerow(row)
        log_file.flush()

    def on_checkpoint() -> None:
        atomic_write(out / STATE_FILE, lambda tmp: torch.save(distiller.state_dict(), tmp))
        save_student(student, out, config=quant_config, teacher=args.model,
                     metadata={**metadata, "distill_step": distiller.step_index, "distill_config": config.to_dict()})

    try:
        run_distillation(distiller, on_log=on_log, on_checkpoint=on_checkpoint, save_every=args.save_every)
    finally:
        log_file.close()
    return {"distill_steps": distiller.step_index, "distill_config": config.to_dict()}
