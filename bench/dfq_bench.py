"""Data-free quantization end to end, side by side (the distillation issue's benchmark).

For each setting (bits x protocol) it runs, on one teacher:
  real-calib    calibration on real training images (MSE observers)
  real-distill  calibrate + reconstruct + distill on real images at our step budget (the ceiling)
  pixels        calibrate + reconstruct + distill on the pixel-optimized set
  gdfq          the published GDFQ recipe (fresh generator in the loop) at --gdfq-steps
  gznq          ours: the shared generator -> refine its batches (--refine-steps) -> calibrate -> reconstruct
                -> distill with the generator in the loop
and reports top-1 at the final step on the full real test set, drop against the teacher, agreement,
wall seconds (generator or pixel-set making included) and images consumed. The generator and pixel set
are made once and reused, and so are the (refined) calibration images within one run (or across runs
with --images-cache): each row that reuses them is charged the seconds their making took.
`--distill-steps 0` leaves out the distillation stage; every row names the pipeline that produced it.

    python bench/dfq_bench.py --only W4A4:paper --out runs/bench_dfq

Writes results.json (appending rows across runs) and results.md to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ASSETS, batches, machine, markdown_table, parse_kwargs, preload, read_rows  # noqa: E402
from gznq.cli.common import tune_allocator  # noqa: E402
from gznq.cli.quantize_cmd import copies_or_auto  # noqa: E402
from dfq.data import load_dataset  # noqa: E402
from gznq.distill import Distiller, DistillConfig, gdfq_recipe, run_distillation  # noqa: E402
from dfq.evaluate import evaluate  # noqa: E402
from dfq.io import atomic_write, write_json_atomic  # noqa: E402
from dfq.models import create_teacher  # noqa: E402
from dfq.quant import QuantConfig, calibrate, quantize_model  # noqa: E402
from dfq.quant.recon_defaults import ReconOptions, recon_defaults  # noqa: E402
from dfq.quant.reconstruct import ReconstructConfig, first_images, reconstruct  # noqa: E402
from gznq.sources import Source, open_source  # noqa: E402
from generators.augment import with_jittered_copies  # noqa: E402
from generators.checkpoint import META_FILE, load_generator  # noqa: E402
from generators.network import ConditionalGenerator, GeneratorConfig, normalize  # noqa: E402
from generators.pixel_opt import PIXELS_META, PixelOptConfig, load_pixels, optimize_pixels, save_pixels  # noqa: E402
from generators.refine import RefineConfig  # noqa: E402
from generators.trainer import GeneratorTrainConfig, train_generator  # noqa: E402

METHODS = ("real-calib", "real-distill", "pixels", "gdfq", "gznq")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--train-data", default=str(ASSETS / "cifar10-jpeg" / "train"))
    p.add_argument("--test-data", default=str(ASSETS / "cifar10-jpeg" / "test"))
    p.add_argument("--generator", help="generator directory, trained there if absent (default: runs/generator_<model>, "
                                       "e.g. runs/generator_resnet20)")
    p.add_argument("--gen-steps", type=int, default=GeneratorTrainConfig.steps)
    p.add_argument("--pixels", help="pixel-optimized set, made there if absent and the `pixels` method runs "
                                    "(default: runs/pixels_<model>)")
    p.add_argument("--only", help="comma-separated settings such as W4A4:paper,W3A3:deploy (default: all six)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--calib-images", type=int, default=2048)
    p.add_argument("--recon-images", type=int, default=1024)
    p.add_argument("--recon-from-calib", action=argparse.BooleanOptionalAction, default=False,
                   help="reconstruct on the first --recon-images calibration images instead of a separate set")
    p.add_argument("--recon-iters", type=int, default=ReconstructConfig.iterations)
    p.add_argument("--recon-drop", type=float, default=ReconstructConfig.drop_prob, help="QDrop probability")
    p.add_argument("--recon-augment", type=copies_or_auto, default=None, metavar="K|auto",
                   help="add K shifted and flipped copies of the reconstruction set to it (default auto: by the "
                        "setting, as quantize --recon-augment)")
    p.add_argument("--recon-last-block", action=argparse.BooleanOptionalAction, default=None,
                   help="reconstruct the classifier too; --no-recon-last-block leaves it as calibrated (default: by "
                        "the setting, as quantize)")
    p.add_argument("--refine-steps", type=int, default=RefineConfig.steps,
                   help="ours: refine each generated calibration/reconstruction batch this many steps (0: raw)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="batch of calibration/reconstruction images, which is also the refinement batch")
    p.add_argument("--refine-config", default="", help="further RefineConfig fields, e.g. 'boundary_share=0.5'")
    p.add_argument("--distill-steps", type=int, default=DistillConfig.steps, help="0: no distillation stage")
    p.add_argument("--gdfq-steps", type=int, help="GDFQ's budget (default: our generator + distillation steps)")
    p.add_argument("--generator-every", type=int, default=4)
    p.add_argument("--images-cache",
                   help="folder where the (refined) calibration images are kept with the seconds their making "
                        "took, so that later runs of other pipelines on the same images skip the refinement and "
                        "are charged those seconds instead")
    p.add_argument("--limit", type=int, help="evaluate on a class-balanced subset (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_dfq")
    args = p.parse_args(argv)
    short = args.model.removeprefix("cifar10_").replace(":", "_").replace("/", "_")
    args.generator = args.generator or f"runs/generator_{short}"
    args.pixels = args.pixels or f"runs/pixels_{short}"
    return args


def settings(only: str | None) -> list[tuple[int, str]]:
    all_settings = [(b, p) for p in ("paper", "deploy") for b in (4, 3, 5)]
    if not only:
        return all_settings
    chosen = []
    for item in only.split(","):
        bits, _, protocol = item.partition(":")
        if not bits.startswith("W") or "A" not in bits or protocol not in ("paper", "deploy"):
            raise ValueError(f"--only entries look like W4A4:paper, got {item!r}")
        w, a = bits[1:].split("A")
        if w != a:
            raise ValueError("this benchmark runs equal weight and activation bits")
        chosen.append((int(w), protocol))
    return chosen


# RefineConfig fields added after cached image sets were first named, with the value that refines as before
# them: at that value they are left out of the name, so that the sets cached before them are found again
LATER_REFINE_FIELDS = {"crop_scale": 1.0}


# RefineConfig fields whose default has changed since the first rows, with their first value: a row names
# them when away from it, so that rows from before and after a change of default stay apart
FORMER_REFINE_DEFAULTS = {**LATER_REFINE_FIELDS, "ce_weight": 1.0}


def away_from_first_defaults(refine: RefineConfig) -> dict:
    """The fields of `refine` away from their first defaults (FORMER_REFINE_DEFAULTS): how it differs from the
    refinement of the first rows."""
    return {k: getattr(refine, k) for k, before in FORMER_REFINE_DEFAULTS.items() if getattr(refine, k) != before}


def refine_key(refine: RefineConfig | None) -> str:
    """The refinement's part of a cached set's key: its repr, less the later fields at their former values."""
    if refine is None:
        return repr(None)
    fields = [f.name for f in dataclasses.fields(refine)
              if f.name not in LATER_REFINE_FIELDS or getattr(refine, f.name) != LATER_REFINE_FIELDS[f.name]]
    return f"RefineConfig({', '.join(f'{name}={getattr(refine, name)!r}' for name in fields)})"


class Bench:
    def __init__(self, args):
        self.args = args
        self.teacher, self.spec = create_teacher(args.model, checkpoint=args.checkpoint)
        self.test = preload(args.test_data, self.spec, limit=args.limit)
        self.teacher_top1 = evaluate(self.teacher, batches(self.test), progress=False).top1
        self.gen_seconds = self._ensure_generator()
        self.pixel_seconds = self._ensure_pixels() if "pixels" in args.methods.split(",") else 0.0
        # images made once per (source, count, seed, refinement) and shared by every setting of the run: the
        # refined generator batches do not depend on the bits or protocol; a row that reuses them is charged
        # the seconds their making took, so its wall time reads as if it had made them itself
        self._made: dict[tuple, tuple[list[torch.Tensor], float]] = {}
        self.reused_seconds = 0.0

    def _ensure_generator(self) -> float:
        path = Path(self.args.generator)
        if not (path / META_FILE).exists():
            train_generator(self.teacher, self.spec, path, teacher_name=self.args.model,
                            config=GeneratorTrainConfig(steps=self.args.gen_steps, seed=self.args.seed))
        return json.loads((path / META_FILE).read_text())["record"]["seconds"]

    def _ensure_pixels(self) -> float:
        path = Path(self.args.pixels)
        if not (path / PIXELS_META).exists():
            config = PixelOptConfig(num_images=self.args.calib_images, seed=self.args.seed)
            images, labels, seconds = optimize_pixels(self.teacher, self.spec, config)
            save_pixels(path, images, labels, teacher=self.args.model, config=config, seconds=seconds)
        return json.loads((path / PIXELS_META).read_text())["seconds"]

    def source_images(self, source: Source, num_images: int, seed: int,
                      refine: RefineConfig | None = None) -> list[torch.Tensor]:
        """The image batches of `source` (labels dropped), made on first use and reused afterwards."""
        key = (self.args.model, source.kind, str(source.path), num_images, seed, self.args.batch_size,
               refine_key(refine))
        cache = Path(self.args.images_cache) if self.args.images_cache else None
        file = cache / (hashlib.sha256(repr(key).encode()).hexdigest()[:16] + ".pt") if cache else None
        if key not in self._made and file is not None and file.exists():
            saved = torch.load(file)
            if saved["key"] != repr(key):
                raise ValueError(f"{file} holds other images ({saved['key']}); remove it")
            self._made[key] = saved["images"], saved["seconds"]
        if key in self._made:
            images, seconds = self._made[key]
            self.reused_seconds += seconds
            return images
        start = time.perf_counter()
        images = [x for x, _ in open_source(source, teacher=self.teacher, teacher_name=self.args.model,
                                            spec=self.spec, num_images=num_images,
                                            batch_size=self.args.batch_size, seed=seed, refine=refine)]
        self._made[key] = images, time.perf_counter() - start
        if file is not None:
            record = {"key": repr(key), "images": images, "seconds": self._made[key][1]}
            atomic_write(file, lambda tmp: torch.save(record, tmp))
        return images

    def calibrated(self, bits: int, protocol: str, source: Source, *, observer: str = "mse",
                   refine: RefineConfig | None = None):
        student = quantize_model(self.teacher, QuantConfig(w_bits=bits, a_bits=bits, protocol=protocol,
                                                           weight_observer=observer, act_observer=observer))
        self.calib_set = self.source_images(source, self.args.calib_images, self.args.seed, refine)
        calibrate(student, self.calib_set)
        return student

    def recon_options(self, bits: int, protocol: str, method: str) -> ReconOptions:
        """--recon-augment and --recon-last-block, each by the setting and source (`recon_defaults`) where left
        open."""
        return recon_defaults(protocol, bits, bits, synthetic=not method.startswith("real"),
                              augment=self.args.recon_augment, last_block=self.args.recon_last_block)

    def reconstructed(self, student, source: Source, options: ReconOptions, refine: RefineConfig | None = None):
        """Reconstruct `student` (just calibrated from `source`) on recon_images images: the first of its
        calibration set with --recon-from-calib, else a separate draw from `source`."""
        a = self.args
        if a.recon_from_calib:
            images = first_images(self.calib_set, a.recon_images)
        else:
            images = self.source_images(source, a.recon_images, a.seed + 1, refine)
        images = with_jittered_copies(images, options.augment, seed=a.seed + 2)
        reconstruct(student, self.teacher, images,
                    ReconstructConfig(iterations=self.args.recon_iters, drop_prob=self.args.recon_drop,
                                      last_block=options.last_block))
        return student

    def distilled(self, student, config: DistillConfig | None, *, generator=None, data=None):
        if config is None:  # --distill-steps 0
            return student
        d = Distiller(student, self.teacher, self.spec, config, generator=generator, batches=data)
        run_distillation(d, progress=False)
        return student

    def run(self, method: str, bits: int, protocol: str) -> dict:
        a = self.args
        real = Source("real", Path(a.train_data))
        gen = Source("generator", Path(a.generator))
        pixels = Source("pixels", Path(a.pixels))
        # every row that distills reconstructs first: its weight grids stay (see --distill-weight-scales)
        ours = (DistillConfig(steps=a.distill_steps, generator_every=a.generator_every, weight_scales=False,
                              seed=a.seed) if a.distill_steps else None)
        distill_images = a.distill_steps * DistillConfig.batch_size
        options = self.recon_options(bits, protocol, method)
        recon = (f"calibrate+reconstruct({a.recon_iters}/block, drop {a.recon_drop}"
                 f"{'' if options.last_block else ', classifier as calibrated'}"
                 f"{f', {options.augment} jittered copies' if options.augment else ''}"
                 f"{', on calibration images' if a.recon_from_calib else ''})")
        recon_images = 0 if a.recon_from_calib else a.recon_images
        pipeline = recon + (f"+distill({a.distill_steps})" if a.distill_steps else "")
        start, self.reused_seconds = time.perf_counter(), 0.0
        extra_seconds, images = 0.0, 0
        if method == "real-calib":
            student = self.calibrated(bits, protocol, real)
            images, pipeline = a.calib_images, "calibrate(mse)"
        elif method == "real-distill":
            student = self.reconstructed(self.calibrated(bits, protocol, real), real, options)
            if ours:  # scanning the 50,000 training files is worth it only when distilling
                ds = load_dataset(a.train_data, self.spec, train=True)
                loader = torch.utils.data.DataLoader(ds, batch_size=ours.batch_size, shuffle=True, drop_last=True,
                                                     num_workers=2, generator=torch.Generator().manual_seed(a.seed))
                student = self.distilled(student, dataclasses.replace(ours, generator_every=0), data=loader)
            images = a.calib_images + recon_images + distill_images
        elif method == "pixels":
            student = self.reconstructed(self.calibrated(bits, protocol, pixels), pixels, options)
            px, labels, _ = load_pixels(a.pixels, teacher_name=a.model)
            data = torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(normalize(px, self.spec.mean, self.spec.std), labels),
                batch_size=min(DistillConfig.batch_size, len(labels)), shuffle=True, drop_last=True,
                generator=torch.Generator().manual_seed(a.seed))
            student = self.distilled(student, ours, data=data)
            extra_seconds, images = self.pixel_seconds, len(labels)
        elif method == "gdfq":
            # default budget: our distillation steps plus the steps our generator was pre-trained for
            gen_meta = json.loads((Path(a.generator) / META_FILE).read_text())
            steps = a.gdfq_steps or a.distill_steps + gen_meta["record"]["step"]
            pipeline = f"calibrate(minmax)+gdfq({steps})"
            generator = ConditionalGenerator(GeneratorConfig(num_classes=self.spec.num_classes,
                                                             image_size=self.spec.image_size))
            student = self.calibrated(bits, protocol, gen, observer="minmax")
            student = self.distilled(student, gdfq_recipe(steps, seed=a.seed), generator=generator)
            images = a.calib_images + steps * 128
        else:  # gznq
            generator, _ = load_generator(a.generator, teacher_name=a.model, teacher=self.teacher)
            refine_fields = parse_kwargs(a.refine_config)
            refine = RefineConfig(steps=a.refine_steps, **refine_fields) if a.refine_steps else None
            student = self.reconstructed(self.calibrated(bits, protocol, gen, refine=refine), gen, options,
                                       refine)
            student = self.distilled(student, ours, generator=generator)
            if refine:
                # fields given, and those away from their first defaults even when left at a default,
                # so that a row says how its images were made
                shown = {**away_from_first_defaults(refine), **refine_fields}
                extra = "".join(f", {k} {v}" for k, v in shown.items())
                batch = f", batch {a.batch_size}" if a.batch_size != 128 else ""
                pipeline = f"refine({a.refine_steps}{batch}{extra})+{pipeline}"
            extra_seconds = self.gen_seconds
            images = a.calib_images + recon_images + distill_images
        seconds = time.perf_counter() - start + extra_seconds + self.reused_seconds
        r = evaluate(student, batches(self.test), teacher=self.teacher, progress=False)
        return {"model": a.model, "setting": f"W{bits}A{bits}:{protocol}", "method": method, "pipeline": pipeline,
                "top1": r.top1, "teacher_top1": r.teacher_top1, "drop": r.teacher_top1 - r.top1,
                "agreement": r.agreement, "seconds": seconds, "images": images, "num_eval_images": r.num_images,
                "seed": a.seed}


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    torch.manual_seed(args.seed)
    bench = Bench(args)
    out = Path(args.out)
    results_path = out / "results.json"
    for bits, protocol in settings(args.only):
        for method in args.methods.split(","):
            if method not in METHODS:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
            row = bench.run(method, bits, protocol)
            row["command"] = "python " + " ".join(sys.argv)
            # re-read so that runs of other settings in parallel processes keep their rows
            rows = read_rows(results_path) if results_path.exists() else []
            key = ("model", "setting", "method", "pipeline", "seed")
            rows = [r for r in rows if [r[k] for k in key] != [row[k] for k in key]] + [row]
            print(row, flush=True)
            write_json_atomic(results_path, {"args": vars(args), "machine": machine(),
                                             "teacher_top1": bench.teacher_top1, "rows": rows})
    rows = read_rows(results_path)
    table = markdown_table(rows, [("model", "model"), ("setting", "setting"), ("method", "method"),
                                  ("pipeline", "pipeline"), ("seed", "seed"), ("top1", "top-1"), ("drop", "drop"),
                                  ("agreement", "agreement"), ("seconds", "wall s"), ("images", "images used")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
