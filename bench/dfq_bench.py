"""The data-free benchmark: pipelines side by side on one teacher, every row from `gznq.run_pipeline`.

For each setting (bits x protocol) and method it runs the pipeline and evaluates the student beside its teacher
on one half of the real test set (`--split`, `dfq.data.split_indices`):

  real-calib    calibration alone on 2,048 real training images (MSE observers): the calibration ceiling
  real-recon    calibration + reconstruction on real training images: the reconstruction ceiling
  real-distill  real-recon + distillation on the real training set (with --distill-steps)
  pixels        calibration + reconstruction (+ distillation) on a pixel-optimized set (made once)
  gdfq          the published GDFQ recipe: min-max calibration, then distillation with a fresh generator
                trained in the loop for --gdfq-steps (its paper: 80,000 steps; say so beside its rows)
  gznq          ours, as shipped: the generator (trained once) -> refined batches -> calibrate -> reconstruct
                (-> distill with --distill-steps)
  gznq-raw      gznq on the generator's raw samples (no refinement): what the generator alone is worth
  noise         gznq's pipeline with noise in place of the generator's samples, refined for as many steps as
                fill the seconds gznq spent on the generator's training and its refinement (matched to the
                gznq row of the same setting run before it in this command, or --noise-steps): the
                no-generator control at equal CPU seconds

`--split select` is for choosing: `--set` changes any PipelineConfig field (dotted for nested configs, e.g.
"refine.crop_scale=1.0, recon_augment=0") and labels the row with it. `--split report` is for reporting: it
runs the defaults as shipped and refuses `--set`, so nothing reported was chosen on the images it is reported on.

    python -m bench.dfq_bench --split select --only W4A4:paper --methods gznq --seed 0 --out runs/bench_select

Rows (top-1, drop and its parts `broken` and `fixed`, agreement, output KL, seconds charged: the pipeline's own
plus what it reused, the generator's
training and a cached image set's making) go to OUT/results.json, replacing a row of the same model, setting,
method, label, split and seed, and to OUT/results.md.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import NamedTuple

from bench.common import ASSETS, default_pixels, machine, markdown_table, pixel_set_of, read_rows, short_name
from dfq.data import SPLITS as DATA_SPLITS
from dfq.io import write_json_atomic
from dfq.models import create_teacher
from dfq.quant import QuantConfig
from generators.checkpoint import META_FILE
from generators.pixel_opt import PIXELS_META, PixelOptConfig, optimize_pixels, save_pixels
from generators.refine import RefineConfig
from generators.trainer import GeneratorTrainConfig, train_generator
from gznq.cli.common import tune_allocator
from gznq.distill import DistillConfig, gdfq_recipe
from gznq.pipeline import PipelineConfig, run_pipeline

METHODS = ("real-calib", "real-recon", "real-distill", "pixels", "gdfq", "gznq", "gznq-raw", "noise")
SPLITS = tuple(s for s in DATA_SPLITS if s != "all")
# what a row is measured on and recorded as: set by the bench's own options, never by --set
FIXED_BY_THE_BENCH = ("model", "checkpoint", "source", "methods", "seed", "eval_data", "eval_split", "eval_limit", "out",
                      "overwrite", "resume", "image_cache")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", required=True, choices=SPLITS,
                   help="select: for choosing (accepts --set); report: the defaults as shipped, for reporting")
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint")
    p.add_argument("--train-data", default=str(ASSETS / "cifar10-jpeg" / "train"))
    p.add_argument("--test-data", default=str(ASSETS / "cifar10-jpeg" / "test"))
    p.add_argument("--generator", help="generator directory, trained there if absent (default: runs/generator_<model>)")
    p.add_argument("--pixels", help="pixel-optimized set, made there if absent (default: runs/pixels_<model>)")
    p.add_argument("--only", help="comma-separated settings such as W4A4:paper,W2A4:paper (default: the six with "
                                  "equal widths, W3/W4/W5 x paper/deploy)")
    p.add_argument("--methods", default="gznq", help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--distill-steps", type=int, default=0, help="distillation steps after reconstruction (0: none)")
    p.add_argument("--gdfq-steps", type=int, default=500, help="the GDFQ recipe's budget here (its paper: 80,000)")
    p.add_argument("--noise-steps", type=int,
                   help="refinement steps of the noise rows (default: matched to the seconds of the gznq row before)")
    p.add_argument("--set", dest="overrides", default="",
                   help="PipelineConfig fields, e.g. 'refine.crop_scale=1.0, recon.last_block=False' (select only)")
    p.add_argument("--image-cache", default="runs/cache", help="where (refined) calibration sets are kept")
    p.add_argument("--limit", type=int, help="evaluate on a class-balanced subset of the split (quick runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.split == "report" and args.overrides:
        p.error("--split report runs the defaults as shipped; choose options with --split select --set ...")
    try:
        overrides = parse_overrides(args.overrides)
        fixed = sorted({name.partition(".")[0] for name in overrides} & set(FIXED_BY_THE_BENCH))
        if fixed:
            raise ValueError(f"{', '.join(fixed)} are set by the bench's own options, not by --set")
        apply_overrides(PipelineConfig(source="real:."), overrides)  # every name and value checked now
    except (ValueError, SyntaxError) as exc:
        p.error(f"--set: {exc}")
    if args.noise_steps is not None and args.noise_steps < 1:
        p.error(f"--noise-steps must be positive, got {args.noise_steps}")
    if "gznq-raw" in args.methods.split(",") and "refine.steps" in parse_overrides(args.overrides):
        p.error("gznq-raw rows are the raw samples: --set refine.steps does not apply to them (run them apart)")
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    args.generator = args.generator or f"runs/generator_{short_name(args.model)}"
    args.pixels = args.pixels or default_pixels(args.model)
    return args


class Setting(NamedTuple):
    """Weight bits, activation bits and protocol of a benchmark row."""

    w_bits: int
    a_bits: int
    protocol: str

    @property
    def label(self) -> str:
        return f"W{self.w_bits}A{self.a_bits}:{self.protocol}"


def settings(only: str | None) -> list[Setting]:
    """The settings of `--only` (W4A4:paper,W2A4:paper,...), or the six with equal widths."""
    if not only:
        return [Setting(b, b, p) for p in ("paper", "deploy") for b in (4, 3, 5)]
    chosen = []
    for item in only.split(","):
        match = re.fullmatch(r"W(\d+)A(\d+):(paper|deploy)", item.strip())
        if not match:
            raise ValueError(f"--only entries look like W4A4:paper or W2A4:deploy, got {item!r}")
        chosen.append(Setting(int(match[1]), int(match[2]), match[3]))
    return chosen


def parse_overrides(text: str) -> dict:
    """'refine.crop_scale=1.0, recon_augment=0' -> {'refine.crop_scale': 1.0, 'recon_augment': 0}."""
    out = {}
    for part in re.split(r",\s*(?=[\w.]+\s*=)", text.strip()) if text.strip() else []:
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)?", name.strip()):
            raise ValueError(f"expected name=value pairs such as 'refine.crop_scale=1.0', got {part!r}")
        try:
            out[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"{value.strip()!r} is not a Python literal (quote strings: name='text')") from None
    return out


def apply_overrides(config: PipelineConfig, overrides: dict) -> PipelineConfig:
    """`config` with each (possibly dotted) field replaced; nested configs are rebuilt, so they validate.

    Raises:
        ValueError: a field that does not exist.
    """
    for name, value in overrides.items():
        head, _, tail = name.partition(".")
        names = {f.name for f in dataclasses.fields(config)}
        if head not in names:
            raise ValueError(f"PipelineConfig has no field {head!r}")
        if tail:
            inner = getattr(config, head)
            if tail not in {f.name for f in dataclasses.fields(inner)}:
                raise ValueError(f"{type(inner).__name__} has no field {tail!r}")
            value = dataclasses.replace(inner, **{tail: value})
        config = dataclasses.replace(config, **{head: value})
    return config


class Bench:
    def __init__(self, args):
        self.args = args
        self.teacher = create_teacher(args.model, checkpoint=args.checkpoint)
        self.overrides = parse_overrides(args.overrides)
        methods = set(args.methods.split(","))
        # noise rows need the generator's seconds only when their steps are matched to them
        uses_generator = {"gznq", "gznq-raw", "gdfq"} & methods or ("noise" in methods and args.noise_steps is None)
        self.gen_seconds = self._ensure_generator() if uses_generator else 0.0
        self.pixel_seconds = self._ensure_pixels() if "pixels" in args.methods.split(",") else 0.0
        self.gznq_rows: dict[Setting, dict] = {}  # setting -> the gznq row's image seconds

    def _ensure_generator(self) -> float:
        path = Path(self.args.generator)
        if not (path / META_FILE).exists():
            train_generator(self.teacher.model, self.teacher.spec, path, teacher_name=self.args.model,
                            config=GeneratorTrainConfig(seed=self.args.seed))
        return json.loads((path / META_FILE).read_text())["record"]["seconds"]

    def _ensure_pixels(self) -> float:
        path = Path(self.args.pixels)
        if not (path / PIXELS_META).exists():
            config = PixelOptConfig(seed=self.args.seed)
            images, labels, seconds = optimize_pixels(self.teacher.model, self.teacher.spec, config)
            save_pixels(path, images, labels, teacher=self.args.model, config=config, seconds=seconds)
        return json.loads((path / PIXELS_META).read_text())["seconds"]

    def config(self, method: str, setting: Setting) -> tuple[PipelineConfig, float]:
        """The pipeline of a row and the seconds charged to it for what it reuses (generator, pixel set)."""
        a = self.args
        quant = QuantConfig(w_bits=setting.w_bits, a_bits=setting.a_bits, protocol=setting.protocol,
                            weight_observer="mse", act_observer="mse")
        distill = ("distill",) if a.distill_steps else ()
        common = dict(model=a.model, checkpoint=a.checkpoint, quant=quant, seed=a.seed, eval_data=a.test_data,
                      eval_split=a.split, eval_limit=a.limit, image_cache=a.image_cache, progress=False,
                      distill=DistillConfig(steps=max(a.distill_steps, 1), seed=a.seed))
        real, gen = f"real:{a.train_data}", f"generator:{a.generator}"
        extra = 0.0
        if method == "real-calib":
            config = PipelineConfig(source=real, **common)
        elif method == "real-recon":
            config = PipelineConfig(source=real, methods=("reconstruct",), **common)
        elif method == "real-distill":
            config = PipelineConfig(source=real, methods=("reconstruct", "distill"), **common)
        elif method == "pixels":
            config = PipelineConfig(source=f"pixels:{a.pixels}", methods=("reconstruct", *distill), **common)
            extra = self.pixel_seconds
        elif method == "gdfq":
            common.update(quant=dataclasses.replace(quant, weight_observer="minmax", act_observer="minmax"),
                          distill=gdfq_recipe(a.gdfq_steps, seed=a.seed))
            # calibrated on the raw samples of our generator, as GDFQ's activation ranges are then tracked
            config = PipelineConfig(source=gen, methods=("distill",), fresh_generator=True,
                                    refine=RefineConfig(steps=0), **common)
        elif method == "noise":
            config = PipelineConfig(source="noise", methods=("reconstruct",), **common)
        else:  # gznq, gznq-raw
            config = PipelineConfig(source=gen, methods=("reconstruct", *distill), **common)
            extra = self.gen_seconds
        config = apply_overrides(config, self.overrides)
        # after --set: the raw rows stay raw, the noise rows refine for the generator's seconds
        if method == "gznq-raw":
            config = dataclasses.replace(config, refine=dataclasses.replace(config.refine, steps=0))
        elif method == "noise":
            steps = self.noise_steps(setting, config.refine_config().steps)
            config = dataclasses.replace(config, refine=dataclasses.replace(config.refine, steps=steps))
        return config, extra

    def noise_steps(self, setting: Setting, steps: int) -> int:
        """--noise-steps, or the refinement steps whose seconds equal those gznq spent on this setting: its
        generator's training plus its refinement of `steps` steps a batch (refinement costs the same per step
        from noise as from samples)."""
        if self.args.noise_steps is not None:
            return self.args.noise_steps
        gznq = self.gznq_rows.get(setting)
        if gznq is None:
            raise ValueError("the noise rows are matched to the seconds of a gznq row: put gznq before noise in "
                             "--methods, or give --noise-steps")
        return max(1, round(steps * (self.gen_seconds + gznq["image_seconds"]) / gznq["image_seconds"]))

    def run(self, method: str, setting: Setting) -> dict:
        config, extra = self.config(method, setting)
        start = time.perf_counter()
        report = run_pipeline(config, teacher=self.teacher).report
        wall = time.perf_counter() - start
        if method == "gznq":
            self.gznq_rows[setting] = {"image_seconds": report["image_seconds"]}
        reused = report["image_seconds"] if report["images_reused"] else 0.0
        label = method + (f"[{self.args.overrides}]" if self.args.overrides else "")
        if method in ("gznq", "gznq-raw", "pixels", "real-distill") and self.args.distill_steps:
            label += f"+distill({self.args.distill_steps})"
        if method == "gdfq":
            label += f"({self.args.gdfq_steps} steps)"
        if method == "noise":
            label += f"({config.refine.steps} steps)"
        generator = self.args.generator if method in ("gznq", "gznq-raw", "gdfq") else None
        return {"model": self.args.model, "setting": setting.label, "method": method, "pipeline": label,
                "generator": generator, "pixels": os.path.normpath(self.args.pixels) if method == "pixels" else None,
                "split": self.args.split, "seed": self.args.seed, "top1": report["top1"],
                "teacher_top1": report["teacher_top1"], "drop": report["drop"], "agreement": report["agreement"],
                "broken": report["broken"], "fixed": report["fixed"], "output_kl": report["output_kl"],
                "seconds": report["seconds"] + reused + extra, "wall_seconds": wall,
                "num_eval_images": report["num_images"], "recon_augment": report.get("recon_augment"),
                "recon_last_block": report.get("recon_last_block")}


KEY = ("model", "setting", "method", "pipeline", "generator", "pixels", "split", "seed")


def row_key(row: dict) -> list:
    return [pixel_set_of(row) if k == "pixels" else row.get(k) for k in KEY]


def merged(rows: list[dict], row: dict) -> list[dict]:
    """`rows` with `row` added, replacing the row of the same KEY (the same measurement, re-run); a row
    written before the pixels field existed is read with the set its command names."""
    return [r for r in rows if row_key(r) != row_key(row)] + [row]


def main(argv=None) -> None:
    args = parse_args(argv)
    tune_allocator()
    bench = Bench(args)
    out = Path(args.out)
    results_path = out / "results.json"
    for setting in settings(args.only):
        for method in args.methods.split(","):
            row = bench.run(method, setting)
            row["command"] = "python -m bench.dfq_bench " + shlex.join(sys.argv[1:])
            # re-read so that runs in parallel processes keep each other's rows
            rows = read_rows(results_path) if results_path.exists() else []
            rows = merged(rows, row)
            print(json.dumps(row), flush=True)
            write_json_atomic(results_path, {"machine": machine(), "rows": rows})
    rows = read_rows(results_path)
    table = markdown_table(rows, [("setting", "setting"), ("method", "method"), ("pipeline", "pipeline"),
                                  ("split", "split"), ("seed", "seed"), ("top1", "top-1"), ("drop", "drop"),
                                  ("agreement", "agreement"), ("seconds", "seconds charged")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
