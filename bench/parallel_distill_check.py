"""Distillation steps on two gloo processes against one process, on a real teacher and its generator.

    OMP_NUM_THREADS=1 python -m bench.parallel_distill_check --generator runs/generator_r20_v2 --dtype float64

Both runs start from the same student (calibrated with min/max ranges on 64 of the generator's samples) and take
`--steps` steps of the shipped `DistillConfig` on a global batch of `--batch-size` images; printed per step: each
loss of one process and of two, then the largest difference of any student and generator weight. In float64 the
two agree to float rounding; in float32 they drift apart after a step or two even though each step is the same
computation, because Adam divides near-zero gradients (a conv bias before BatchNorm, a scale whose images all
round the same way) by their own size, so float rounding decides the direction of a full learning-rate step, and
a 4-bit student's output jumps when a weight crosses a rounding boundary. `--perturb 1e-9` compares one process
with itself, its gradients perturbed by Gaussian noise of that size (in place of the second run on two processes),
to show that drift without any second process:

    OMP_NUM_THREADS=1 python -m bench.parallel_distill_check --generator runs/generator_r20_v2 --dtype float32 \
        --perturb 1e-9
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import gznq.distill
from dfq.models import create_teacher
from dfq.quant import QuantConfig, calibrate, quantize_model
from generators.checkpoint import load_generator
from generators.network import normalize
from gznq.distill import DistillConfig, Distiller


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--generator", required=True, help="a trained generator directory of the model")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    p.add_argument("--perturb", type=float, default=0.0,
                   help="instead of two processes: one process with its gradients perturbed by noise of this size")
    return p.parse_args(argv)


def distill(args: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    """(losses per step, student weights, generator weights) after `args.steps` steps, in this process."""
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # the draws (latents, noise, blends) in that precision too
    torch.manual_seed(0)
    teacher, spec = create_teacher(args.model)
    generator, _ = load_generator(args.generator, teacher_name=args.model, teacher=teacher)
    teacher, generator = teacher.to(dtype), generator.to(dtype)
    student = quantize_model(teacher, QuantConfig(w_bits=4, a_bits=4, protocol="paper", act_observer="minmax"))
    draws = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = torch.randn(64, generator.config.latent_dim, generator=draws)
        images = generator.eval()(z, torch.arange(64) % spec.num_classes, generator=draws)
    calibrate(student, [normalize(images, spec.mean, spec.std)])
    distiller = Distiller(student, teacher, spec, DistillConfig(steps=args.steps, batch_size=args.batch_size),
                          generator=generator)
    losses = [distiller.step() for _ in range(args.steps)]
    return losses, student.state_dict(), generator.state_dict()


def _worker(rank: int, port: int, args: argparse.Namespace, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        result = distill(args)
        if rank == 0:
            torch.save(result, path)
    finally:
        dist.destroy_process_group()


def largest_difference(a: dict, b: dict) -> tuple[str, float]:
    diffs = {k: (a[k].double() - b[k].double()).nan_to_num().abs().max().item() for k in a if a[k].is_floating_point()}
    key = max(diffs, key=diffs.get)
    return key, diffs[key]


def perturbed(args: argparse.Namespace) -> tuple[list[dict], dict, dict]:
    """`distill` in this process with Gaussian noise of size `args.perturb` added to every gradient the Distiller
    averages (the averaging is the identity in one process; it is the one place every gradient passes)."""
    noise = torch.Generator().manual_seed(2)

    def add_noise(params) -> None:
        for p in params:
            if p.grad is not None:
                p.grad.add_(torch.randn(p.grad.shape, generator=noise).to(p.grad) * args.perturb)

    original = gznq.distill.distributed.average_gradients
    gznq.distill.distributed.average_gradients = add_noise
    try:
        return distill(args)
    finally:
        gznq.distill.distributed.average_gradients = original


def report(one, two) -> None:
    for step, (a, b) in enumerate(zip(one[0], two[0]), 1):
        print(f"step {step}: " + ", ".join(f"{k} {a[k]:.6f} / {b[k]:.6f}" for k in a))
    for name, i in (("student", 1), ("generator", 2)):
        key, diff = largest_difference(one[i], two[i])
        print(f"{name}: largest weight difference {diff:.2e} ({key})")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.perturb:
        one, two = distill(args), perturbed(args)
        report(one, two)
        return
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        path = os.path.join(tmp, "two.pt")
        mp.spawn(_worker, args=(port, args, path), nprocs=2, join=True)
        two = torch.load(path, weights_only=False)
    report(distill(args), two)


if __name__ == "__main__":
    main()
