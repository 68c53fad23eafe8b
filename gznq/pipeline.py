"""The data-free pipeline as one verb: source -> refine -> calibrate -> reconstruct -> distill -> evaluate.

    from gznq import PipelineConfig, run_pipeline
    result = run_pipeline(PipelineConfig(source="generator:runs/generator_resnet20", methods=("reconstruct",),
                                         quant=QuantConfig(w_bits=4, a_bits=4, protocol="paper",
                                                           weight_observer="mse", act_observer="mse"),
                                         eval_data="../shared/assets/cifar10-jpeg/test", out="runs/r20_w4a4"))
    result.report["drop"]

`train.py quantize` builds a PipelineConfig from its options and calls `run_pipeline`; so does the benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dfq import distributed
from dfq.data import SPLITS, build_eval_loader
from dfq.evaluate import evaluate
from dfq.io import write_json_atomic
from dfq.models import SpecOverrides, Teacher, create_teacher, is_known_teacher
from dfq.models.registry import check_spec_fits
from dfq.quant import QuantConfig, load_student, quantize_model, save_student, summarize
from dfq.quant.calibrate import calibrate
from dfq.quant.recon_defaults import recon_defaults
from dfq.quant.reconstruct import ReconstructConfig, first_images, reconstruct
from dfq.quant.serialization import META_FILE, WEIGHTS_FILE
from generators.augment import scaled_shift, with_jittered_copies
from generators.checkpoint import check_generator_spec, load_generator, read_generator_meta
from generators.pixel_opt import PIXELS_META
from generators.refine import RefineConfig, default_refine_steps
from gznq.distill import DistillConfig, Distiller
from gznq.distill_stage import (DISTILL_FILES, STATE_FILE, check_pixel_batch, distill_data, load_distill_state,
                                run_distill_stage)
from gznq.outdir import ResultKind, check_output, partial_dir, writing_output
from gznq.sources import LATER_REFINE_FIELDS_FIRST_VALUE, REFINABLE, check_source, image_set, parse_source

METHODS = ("calibrate", "reconstruct", "distill")
REPORT_FILE = "report.json"
STUDENT_DIR = ResultKind("gznq student", marker=META_FILE,
                         entries=(WEIGHTS_FILE, META_FILE, REPORT_FILE, *DISTILL_FILES), resume_file=STATE_FILE)


def _mse_quant() -> QuantConfig:
    return QuantConfig(weight_observer="mse", act_observer="mse")


@dataclass(frozen=True)
class PipelineConfig:
    """One data-free quantization run.

    model, checkpoint, trust_checkpoint, spec_overrides: the teacher (see `dfq.create_teacher`); overrides left
    empty with a generator source are read from the generator, which records the spec it was trained for. To
    quantize a model of one's own, pass it to `run_pipeline(config, teacher=Teacher(model, spec))` and name it
    in `model` (any label; `load_student(dir, model=...)` loads the result). source: where calibration
    images come from, `real:DIR`, `generator:DIR`, `pixels:DIR` or `noise` (`gznq.sources`). quant: how the
    student is quantized (the default: W8A8 `deploy` with MSE observers for weights and activations).
    methods: the chain after calibration, which always runs first: "reconstruct" and/or "distill".

    calib_images, batch_size: the calibration set, made (and for a generator refined with `refine`) in
    batches of batch_size; refinement matches each batch's BN statistics as a whole. recon: block-wise
    reconstruction; it runs on the first recon_images calibration images (all of them when None) with
    recon_from_calib, else on a separate draw of recon_images (1,024 when None). recon_augment: jittered
    copies of the reconstruction set added to it; it and `recon.last_block`, when None, are chosen by the
    setting and source (`dfq.quant.recon_defaults`). distill: the distillation; its `weight_scales`, when
    None, are kept after a reconstruction (whose rounding holds for their grid only) and learned otherwise.
    fresh_generator: distill with an untrained generator in the loop (the GDFQ recipe trains its own).

    eval_data, eval_split, eval_limit: real images to evaluate the student on beside its teacher (`split`:
    "all", or the "select" / "report" halves, `dfq.data.split_indices`). out: the student directory (None:
    nothing is written); it is written to OUT.partial and renamed at the end; an existing student there is
    replaced only with overwrite; resume continues an interrupted distillation from OUT.partial.
    image_cache: a directory keeping the (refined) calibration sets, so a run with other bits on the same
    images skips their making (`gznq.sources.image_set`).

    Under several processes (`accelerate launch`, `dfq.distributed`) each process makes its share of the
    calibration images (a generator's stream deals its batches in turn; other sources: calib_images / N with
    the process's own seed), calibration merges every process's ranges, reconstruction averages the gradients of
    every process's images, evaluation splits the images; the main process writes the student. Distillation
    runs as one process.
    """

    source: str
    model: str = "cifar10_resnet20"
    checkpoint: str | None = None
    trust_checkpoint: bool = False
    spec_overrides: SpecOverrides = SpecOverrides()
    quant: QuantConfig = field(default_factory=_mse_quant)
    methods: tuple[str, ...] = ("calibrate",)
    calib_images: int = 2048
    batch_size: int = 256
    refine: RefineConfig = RefineConfig()
    recon: ReconstructConfig = ReconstructConfig()
    recon_images: int | None = None
    recon_from_calib: bool = True
    recon_augment: int | None = None
    distill: DistillConfig = DistillConfig()
    fresh_generator: bool = False
    seed: int = 0
    eval_data: str | None = None
    eval_split: str = "all"
    eval_limit: int | None = None
    out: str | None = None
    overwrite: bool = False
    resume: bool = False
    save_every: int = 200
    image_cache: str | None = None
    device: str | None = None
    workers: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("source", "checkpoint", "eval_data", "out", "image_cache"):  # a Path is kept as its string
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        methods = [m for m in self.methods if m != "calibrate"]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        object.__setattr__(self, "methods", ("calibrate", *dict.fromkeys(methods)))
        source = parse_source(self.source)
        if self.calib_images < 1 or self.batch_size < 1:
            raise ValueError(f"calib_images and batch_size must be positive, got {self.calib_images} and "
                             f"{self.batch_size}")
        if self.recon_augment is not None and self.recon_augment < 0:
            raise ValueError(f"recon_augment is a number of copies and must be >= 0, got {self.recon_augment}")
        if self.recon_images is not None and self.recon_images < 1:
            raise ValueError(f"recon_images must be positive, got {self.recon_images}")
        if self.recon_from_calib and (self.recon_images or 0) > self.calib_images:
            raise ValueError(f"reconstruction on calibration images: recon_images ({self.recon_images}) must not "
                             f"exceed calib_images ({self.calib_images})")
        if self.eval_split not in SPLITS:
            raise ValueError(f"unknown eval split {self.eval_split!r}; choose one of {', '.join(SPLITS)}")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit must be positive, got {self.eval_limit}")
        if self.resume and "distill" not in self.methods:
            raise ValueError("resume continues an interrupted distillation; add distill to the methods")
        if (self.resume or self.overwrite) and self.out is None:
            raise ValueError("resume and overwrite need an output directory (out)")
        if self.fresh_generator and ("distill" not in self.methods or source.kind != "generator"):
            raise ValueError("fresh_generator distills with an untrained generator: it needs distill and a "
                             "generator source")
        if self.save_every < 1:
            raise ValueError(f"save_every must be positive, got {self.save_every}")
        if source.kind == "noise" and (self.refine_config().steps == 0 or "distill" in self.methods):
            raise ValueError("the noise source only starts refinement: it needs refine.steps > 0 (--refine-steps) "
                             "and no distill (distillation draws from a generator, real or pixel source)")

    def refine_config(self) -> RefineConfig:
        """`refine` with its steps decided: those given, or where left open (None) the setting's
        (`generators.refine.default_refine_steps`), decided from `quant` whenever asked."""
        if self.refine.steps is not None:
            return self.refine
        return dataclasses.replace(self.refine, steps=default_refine_steps(self.quant.w_bits, self.quant.a_bits))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PipelineResult:
    """The student (in eval mode) and the report written to OUT/report.json (also when nothing is written)."""

    student: nn.Module
    report: dict


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_pipeline(config: PipelineConfig, *, teacher: Teacher | None = None) -> PipelineResult:
    """Run the data-free pipeline that `config` describes; see `PipelineConfig`.

    Every input (source, evaluation data, output directory, teacher) is checked before any work. A teacher
    already built (with its spec) may be passed instead of being created from `config.model`; it is moved to
    the run's device. Randomness is seeded from `config.seed` and the caller's random state is left as it was.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad input, named with the fix.
        KeyboardInterrupt: re-raised after the interrupted run kept what a resume can use (OUT.partial).
    """
    c = config
    world, main = distributed.world_size(), distributed.is_main_process()
    if world > 1:  # several processes (accelerate launch): each makes and uses its share of the images
        if "distill" in c.methods and c.distill.batch_size % (2 * world):
            raise ValueError(f"distillation's batch of {c.distill.batch_size} images must split into {world} equal "
                             f"shares of pairs, one per process: use a batch size divisible by {2 * world}")
        made = [c.calib_images] + ([] if c.recon_from_calib else [c.recon_images or 1024])  # image sets made
        if c.source.startswith("generator:"):  # the stream deals whole batches to the processes in turn
            made = [math.ceil(n / c.batch_size) for n in made]
        shares = made + ([c.recon_images or c.calib_images] if c.recon_from_calib and "reconstruct" in c.methods
                         else [])  # reconstruction on each process's first images
        if any(n % world for n in shares):
            raise ValueError(f"the calibration and reconstruction images must split into {world} equal shares, one "
                             f"per process (for a generator source, whole batches of batch_size); got "
                             f"{', '.join(map(str, shares))}")
        c = dataclasses.replace(c, progress=c.progress and main)
    source = parse_source(c.source)
    check_source(source)
    pixel_meta = source.path / PIXELS_META if source.kind == "pixels" else None
    if "distill" in c.methods and pixel_meta is not None and pixel_meta.is_file():  # before any work
        check_pixel_batch(source.path, json.loads(pixel_meta.read_text()).get("num_images", 0),
                          c.distill.batch_size, world)
    if c.eval_data is not None and not Path(c.eval_data).exists():
        raise FileNotFoundError(f"evaluation data {c.eval_data!r} does not exist")
    if c.out is not None:
        check_output(c.out, STUDENT_DIR, overwrite=c.overwrite, resume=c.resume)
    device = c.device or default_device()
    generator_meta = read_generator_meta(source.path) if source.kind == "generator" else None
    if teacher is None:
        overrides = c.spec_overrides
        if overrides.is_empty() and generator_meta is not None:
            overrides = SpecOverrides.from_dict(generator_meta.get("input_spec"))
        teacher = create_teacher(c.model, checkpoint=c.checkpoint, trust_checkpoint=c.trust_checkpoint,
                                 overrides=overrides)
    else:
        if not c.spec_overrides.is_empty():
            raise ValueError("spec_overrides describe a teacher built by name; a teacher passed in carries its own spec")
        check_spec_fits(teacher.model, teacher.spec, name=c.model)
        _check_named(teacher, c.model)
    model, spec = teacher
    if generator_meta is not None:
        check_generator_spec(generator_meta, spec, path=source.path)
    model.to(device)
    eval_loader = None
    if c.eval_data is not None:  # built now, so that a bad folder fails before the work
        eval_loader = build_eval_loader(c.eval_data, spec, split=c.eval_split, limit=c.eval_limit,
                                        num_workers=c.workers)
    if source.kind == "generator":  # a generator for another teacher, or a damaged one, is refused now
        load_generator(source.path, teacher_name=c.model, teacher=model)
    options = recon_defaults(c.quant.protocol, c.quant.w_bits, c.quant.a_bits, synthetic=source.kind != "real",
                             augment=c.recon_augment, last_block=c.recon.last_block)
    distributed.barrier()  # every process has checked the output before the main one writes into it
    writes = c.out is not None and main  # one process writes the student; all hold the same one
    with writing_output(c.out, STUDENT_DIR, resume=c.resume) if writes else contextlib.nullcontext() as work:
        cuda = list(range(torch.cuda.device_count()))
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(c.seed)
            student, report = _run(c, source, model, spec, options, work)
        if eval_loader is not None:  # the student as saved, so that re-evaluating it gives these figures
            evaluated = load_student(work, device=device, model=None if is_known_teacher(c.model) else model)[0] \
                if work is not None else student
            result = evaluate(evaluated, eval_loader, teacher=model, progress=c.progress, desc="student+teacher")
            evaluation = result.to_dict()
            evaluation["eval_seconds"] = evaluation.pop("seconds")  # "seconds" stays the quantization's time
            report.update(evaluation, eval_data=c.eval_data, eval_split=c.eval_split, eval_limit=c.eval_limit)
        if world > 1:
            report["processes"] = world
        if work is not None:
            report["student"] = str(c.out)
            write_json_atomic(work / REPORT_FILE, report)
    distributed.barrier()  # the student is written before any process returns
    return PipelineResult(student.eval(), report)


def _check_named(teacher: Teacher, name: str) -> None:
    """A teacher passed in under a name `create_teacher` knows must be that model: the student is saved under
    the name and rebuilt from it."""
    if not is_known_teacher(name):
        return
    overrides = SpecOverrides.from_dict(dataclasses.asdict(teacher.spec))
    expected = None
    with torch.random.fork_rng(devices=[]):  # the skeleton's random weights leave the caller's state alone
        for attempt in (overrides, dataclasses.replace(overrides, num_classes=None)):  # builders without it
            try:
                skeleton, _ = create_teacher(name, pretrained=False, overrides=attempt)
            except ValueError:
                continue
            expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
            break
    given = {k: tuple(v.shape) for k, v in teacher.model.state_dict().items()}
    if expected != given:
        raise ValueError(f"the teacher passed in is not {name!r} (its layers differ), yet the student would be saved "
                         f"under that name; name a model of your own with a label of its own, e.g. "
                         f"PipelineConfig(model='my_net', ...), and load its student with load_student(dir, model=...)")


# The fields a resumed distillation must share with the run it continues; the rest only say where and how
# to run (device, progress), evaluate or keep things.
_NOT_RUN_DEFINING = ("out", "overwrite", "resume", "progress", "workers", "device", "image_cache", "eval_data",
                     "eval_split", "eval_limit", "save_every")


def _run_defining(c: PipelineConfig) -> dict:
    return {k: v for k, v in c.to_dict().items() if k not in _NOT_RUN_DEFINING}


def _with_later_defaults(current, saved):
    """`saved` (a nested config as a run recorded it) with the fields of `current`'s dataclass that it lacks
    (added to the code after the run started) filled in at their defaults; a RefineConfig's at the values they
    had when they were added (`LATER_REFINE_FIELDS_FIRST_VALUE`: the run ran as they were then, whatever the
    default is today)."""
    if not (dataclasses.is_dataclass(current) and isinstance(saved, dict)):
        return saved
    first = LATER_REFINE_FIELDS_FIRST_VALUE if isinstance(current, RefineConfig) else {}
    later = {f.name: first.get(f.name, f.default) for f in dataclasses.fields(current)
             if f.name not in saved and f.default is not dataclasses.MISSING}
    return {**saved, **later}


def _check_resumed(c: PipelineConfig, state: dict) -> None:
    """Refuse to continue an interrupted distillation with other options than it was started with (a field
    added to a nested config since it started counts as its default)."""
    before, now = state["run"]["config"], _run_defining(c)
    differ = [k for k in now if now[k] != _with_later_defaults(getattr(c, k, None), before.get(k))]
    if differ:
        raise ValueError(f"the run in OUT.partial was started with other options ({', '.join(differ)}); resume it "
                         "with the command that started it, or pass --overwrite to start again")


def _run(c: PipelineConfig, source, teacher: nn.Module, spec, options, work: Path | None) -> tuple[nn.Module, dict]:
    """Quantize, calibrate, reconstruct and distill as `c` says; returns the student and the report so far."""
    start = time.perf_counter()
    student = quantize_model(teacher, c.quant)
    refine = c.refine_config()
    refine = refine if source.kind in REFINABLE and refine.steps > 0 else None
    # several processes: each reads the interrupted run's checkpoint, which the main process writes
    state = load_distill_state(work if work is not None else partial_dir(c.out)) if c.resume else None
    if state is not None:  # the student, its metadata and its records come from the interrupted run
        _check_resumed(c, state)
        metadata, records = state["run"]["metadata"], state["run"]["records"]
    else:
        records, data = _calibrate_and_reconstruct(c, source, teacher, spec, student, refine, options)
        metadata = _metadata(c, source, refine, options, data)
    if "distill" in c.methods:
        distill = c.distill
        if distill.weight_scales is None:
            distill = dataclasses.replace(distill, weight_scales="reconstruct" not in c.methods)
        generator, batches = distill_data(source, teacher=teacher, teacher_name=c.model, spec=spec, config=distill,
                                          seed=c.seed, fresh_generator=c.fresh_generator, workers=c.workers)
        distiller = Distiller(student, teacher, spec, distill, generator=generator, batches=batches)
        if state is not None:
            distiller.load_state_dict(state)

        def save(directory: Path) -> None:
            save_student(student, directory, config=c.quant, teacher=c.model, spec=spec,
                         metadata={**metadata, "distill_step": distiller.step_index})

        run_distill_stage(distiller, work, save=save, extra_state={"run": {"metadata": metadata, "records": records, "config": _run_defining(c)}},
                          save_every=c.save_every, progress=c.progress)
        records = {**records, "distill_steps": distiller.step_index, "distill_config": distill.to_dict()}
    seconds = time.perf_counter() - start
    metadata = {**metadata, "seconds": seconds}
    if work is not None:
        save_student(student, work, config=c.quant, teacher=c.model, spec=spec, metadata=metadata)
    summary = summarize(student)
    report = {"teacher": c.model, **metadata, "quant_config": c.quant.to_dict(),
              "compression_ratio": summary.compression_ratio, "pipeline_config": c.to_dict(), **records}
    return student, report


def _calibrate_and_reconstruct(c: PipelineConfig, source, teacher, spec, student, refine, options) -> tuple[dict, dict]:
    """Calibrate `student` on the source's images, then reconstruct it when asked; returns the report records
    and how the images were made (seconds, whether they came from the cache)."""
    world, rank = distributed.world_size(), distributed.rank()

    def images(num_images: int, seed: int):
        # several processes: a generator's stream gives each process its batches of the one-process stream
        # (batch i to process i mod N); other sources make each process's share with its own seed
        if world > 1 and source.kind == "pixels":  # a fixed set: each process its slice of it
            made = image_set(source, teacher=teacher, teacher_name=c.model, spec=spec, num_images=num_images,
                             batch_size=c.batch_size, seed=seed, refine=refine, workers=c.workers,
                             cache_dir=c.image_cache, progress=c.progress)
            mine = torch.cat(made[0])[rank::world]
            return list(mine.split(c.batch_size)), made[1], made[2]
        if world > 1 and source.kind != "generator":
            num_images, seed = num_images // world, seed + 7919 * rank
        return image_set(source, teacher=teacher, teacher_name=c.model, spec=spec, num_images=num_images,
                         batch_size=c.batch_size, seed=seed, refine=refine, workers=c.workers,
                         cache_dir=c.image_cache, progress=c.progress)

    calib, seconds, reused = images(c.calib_images, c.seed)
    calibrate(student, calib, progress=c.progress)
    data = {"image_seconds": seconds, "images_reused": reused}
    if "reconstruct" not in c.methods:
        return {}, data
    if c.recon_from_calib:
        recon_set = first_images(calib, (c.recon_images or c.calib_images) // world)
    else:
        recon_set, more, more_reused = images(c.recon_images or 1024, c.seed + 1)
        data = {"image_seconds": seconds + more, "images_reused": reused and more_reused}
    recon_set = with_jittered_copies(recon_set, options.augment, max_shift=scaled_shift(4, spec.image_size),
                                     seed=c.seed + 2)
    recon = dataclasses.replace(c.recon, last_block=options.last_block, seed=c.seed)
    return {"reconstruct": reconstruct(student, teacher, recon_set, recon, progress=c.progress)}, data


def _metadata(c: PipelineConfig, source, refine: RefineConfig | None, options, data: dict) -> dict:
    """How the student was made, as recorded in student.json and report.json."""
    metadata = {"method": ",".join(c.methods), "source": str(source), "calib_images": c.calib_images,
                "batch_size": c.batch_size, "seed": c.seed, "teacher_checkpoint": c.checkpoint, **data}
    if refine is not None:
        metadata.update(refine_steps=refine.steps, refine_ce_weight=refine.ce_weight,
                        refine_precision=refine.precision, refine_space=refine.space)
        if refine.space == "generator":  # the crops of pixel refinement do not apply
            metadata["refine_weight_lr"] = refine.weight_lr
        else:
            metadata["refine_crop_scale"] = refine.crop_scale
    if "reconstruct" in c.methods:
        metadata.update(recon_images=c.recon_images or (c.calib_images if c.recon_from_calib else 1024),
                        recon_iters=c.recon.iterations, recon_drop=c.recon.drop_prob,
                        recon_last_block=options.last_block, recon_from_calib=c.recon_from_calib,
                        recon_augment=options.augment)
        if options.why:
            metadata["recon_defaults"] = options.why
    return metadata


__all__ = ["METHODS", "PipelineConfig", "PipelineResult", "default_device", "run_pipeline"]
