"""Which reconstruction settings generalize from generated images to real ones? A probe, not the benchmark.

Calibrates one student (MSE observers, 2,048 images from --source), then for each variant reconstructs a
copy of it on 1,024 images (or n=...) from the same source and evaluates it beside the teacher on the
real test set. A variant is ReconstructConfig fields plus `n` (reconstruction images), `from_calib` (take
them from the calibration set), `mix` (share of each reconstruction batch replaced by blends of two of its
images) and `augment` (that many shifted and flipped copies of the set added to it), separated by
semicolons. With
--refine-steps, generated batches are refined against the teacher's BN statistics first (the reconstruction
set once, shared by the variants; the time to make it is reported by the first variant that uses it):

    python bench/recon_probe.py --bits 4 --protocol paper \\
        --variants "iterations=500, last_block=True; iterations=500; iterations=500, mix=0.5"
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, parse_kwargs, preload  # noqa: E402
from dfq.cli.common import tune_allocator  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.io import atomic_write  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, quantize_model, save_student  # noqa: E402
from dfq.quant.reconstruct import ReconstructConfig, first_images, reconstruct  # noqa: E402
from dfq.sources import open_source, parse_source  # noqa: E402
from generators.augment import with_jittered_copies  # noqa: E402
from generators.refine import RefineConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--source", default="generator:runs/generator_resnet20")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--protocol", default="paper")
    p.add_argument("--variants", default="iterations=500")
    p.add_argument("--refine-steps", type=int, default=0,
                   help="refine generated batches for this many steps (generators.refine; 0: raw samples)")
    p.add_argument("--refine-config", default="",
                   help="further RefineConfig fields for --refine-steps, e.g. 'boundary_share=0.5, lr=0.1'")
    p.add_argument("--refine-calib", action=argparse.BooleanOptionalAction, default=True,
                   help="refine the calibration set too (--no-refine-calib: only the reconstruction set)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="source batch size, which is also the refinement batch (its BN statistics are the batch's)")
    p.add_argument("--limit", type=int, help="class-balanced test subset (default: the full test set)")
    p.add_argument("--calib-cache", type=Path,
                   help="file of the (refined) calibration set: loaded when it exists, else made and saved there, "
                        "so that later probes on the same set skip the refinement (the caller keeps it matched "
                        "to --source, --refine-steps and --batch-size)")
    p.add_argument("--threads", type=int, help="torch threads (e.g. 1 to run two probes side by side)")
    p.add_argument("--save", type=Path,
                   help="keep each variant's student in SAVE/<variant number> (eval.py --checkpoint reads it)")
    return p.parse_args(argv)


def blend(images: list[torch.Tensor], share: float, seed: int) -> list[torch.Tensor]:
    """Replace `share` of every batch with lam * a + (1 - lam) * b of two of its images, lam ~ U(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in images:
        k = int(share * len(x))
        x = x.clone()
        if k:
            idx, other = torch.randperm(len(x), generator=g)[:k], torch.randperm(len(x), generator=g)[:k]
            lam = torch.rand(k, 1, 1, 1, generator=g)
            x[idx] = lam * x[idx] + (1 - lam) * x[other]
        out.append(x)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher, spec = create_teacher(args.model)
    test = preload(str(ASSETS / "cifar10-jpeg" / "test"), spec, limit=args.limit)
    source = parse_source(args.source)

    def images(n: int, seed: int, refine_steps: int) -> list[torch.Tensor]:
        refine = RefineConfig(steps=refine_steps, **parse_kwargs(args.refine_config)) if refine_steps else None
        return [x for x, _ in open_source(source, teacher=teacher, teacher_name=args.model, spec=spec,
                                          num_images=n, batch_size=args.batch_size, seed=seed,
                                          refine=refine)]

    qconfig = QuantConfig(w_bits=args.bits, a_bits=args.bits, protocol=args.protocol,
                          weight_observer="mse", act_observer="mse")
    base = quantize_model(teacher, qconfig)
    start = time.perf_counter()
    if args.calib_cache is not None and args.calib_cache.exists():
        calib_set = torch.load(args.calib_cache)
        print(f"calibration set loaded from {args.calib_cache}", flush=True)
    else:
        calib_set = images(2048, 0, args.refine_steps if args.refine_calib else 0)
        if args.calib_cache is not None:
            atomic_write(args.calib_cache, lambda tmp: torch.save(calib_set, tmp))
    calibrate(base, calib_set)
    print(f"calibrated in {time.perf_counter() - start:.0f} s", flush=True)
    recon_sets: dict[int, list[torch.Tensor]] = {}
    for number, text in enumerate(args.variants.split(";")):
        fields = parse_kwargs(text)
        n, mix, from_calib = fields.pop("n", 1024), fields.pop("mix", 0.0), fields.pop("from_calib", False)
        copies = fields.pop("augment", 0)
        student, start = copy.deepcopy(base), time.perf_counter()
        if from_calib:
            recon_set = first_images(calib_set, n)
        else:
            if n not in recon_sets:
                recon_sets[n] = images(n, 1, args.refine_steps)
            recon_set = recon_sets[n]
        recon_set = with_jittered_copies(blend(recon_set, mix, seed=5), copies, seed=6)
        records = reconstruct(student, teacher, recon_set, ReconstructConfig(**fields))
        r = evaluate(student, batches(test), teacher=teacher, progress=False)
        print(f"{text.strip()}: drop {r.teacher_top1 - r.top1:.2f} agreement {r.agreement:.2f} "
              f"top1 {r.top1:.2f} ({time.perf_counter() - start:.0f} s; undecided rounding per block "
              f"{[round(x['undecided'], 3) for x in records]})", flush=True)
        if args.save is not None:
            save_student(student, args.save / str(number), config=qconfig, teacher=args.model,
                         metadata={"variant": text.strip(),
                                   "probe": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})


if __name__ == "__main__":
    main()
