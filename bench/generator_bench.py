"""Generator variants side by side: train each for a fixed number of steps and judge its samples.

    python -m bench.generator_bench --steps 400 --out runs/gen_bench \\
        --variant base= --variant info="info_weight=1.0" --variant classbn="class_bn_weight=1.0"

Each `--variant NAME=OVERRIDES` trains a generator for `--model` with GeneratorTrainConfig (and, for
`gen.*` names, GeneratorConfig) fields replaced, into OUT/NAME (kept: a second run reuses it when it was
trained with the same configs, and refuses it otherwise), then judges
`--num-images` samples of it (`generators.quality.measure_quality`): the teacher's top-1 on them, its
confidence, the BN losses, and within-class diversity of the teacher's features and of the images pooled to
8 x 8, each against as many real training images. No test image is used, so choosing on these figures is
allowed. Rows (with the whole training config, so that they stay readable when the defaults change) go
to OUT/results.json, a table to OUT/results.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from bench.common import ASSETS, machine, markdown_table, read_rows
from bench.dfq_bench import parse_overrides
from dfq.data import build_eval_loader
from dfq.io import write_json_atomic
from dfq.models import create_teacher
from generators.checkpoint import META_FILE, load_generator
from generators.network import GeneratorConfig
from generators.quality import measure_quality, stream_throughput
from generators.stream import SyntheticStream
from generators.trainer import GeneratorTrainConfig, train_generator


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar10_resnet20")
    p.add_argument("--checkpoint", help="local weights file for the teacher")
    p.add_argument("--variant", action="append", required=True,
                   help="NAME=OVERRIDES, e.g. info='info_weight=1.0, gen.latent_dim=64' (empty: the defaults)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every variant (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1024, help="samples judged, and real images beside them")
    p.add_argument("--real-data", default=str(ASSETS / "cifar10-jpeg" / "train"),
                   help="real images for the diversity reference (training images: never the report split)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    names = []
    for item in args.variant:  # every variant checked before any trains
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or "/" in name or name in names:
            p.error(f"--variant {item!r}: expected a new, plain NAME=OVERRIDES (NAME=: the defaults)")
        names.append(name)
        try:
            configs(parse_overrides(text), _SpecStub(), args.steps, args.seed)
        except (ValueError, TypeError, SyntaxError) as exc:
            p.error(f"--variant {name}: {exc}")
    return args


class _SpecStub:
    """Enough of an InputSpec to validate the configs before the teacher is loaded."""

    num_classes, image_size, channels = 10, 32, 3


def configs(overrides: dict, spec, steps: int | None, seed: int) -> tuple[GeneratorConfig, GeneratorTrainConfig]:
    gen = {k[4:]: v for k, v in overrides.items() if k.startswith("gen.")}
    train = {k: v for k, v in overrides.items() if not k.startswith("gen.")}
    if steps is not None:
        train.setdefault("steps", steps)
    train.setdefault("seed", seed)
    for cls, fields in ((GeneratorConfig, gen), (GeneratorTrainConfig, train)):
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return (GeneratorConfig(num_classes=spec.num_classes, image_size=spec.image_size, channels=spec.channels, **gen),
            dataclasses.replace(GeneratorTrainConfig(), **train))


def check_kept(meta: dict, gen_config: GeneratorConfig, train_config: GeneratorTrainConfig, path: Path) -> None:
    """Refuse a kept generator (its generator.json `meta`) trained with other configs than a variant asks for.

    Raises:
        ValueError: the configs differ.
    """
    asked = json.loads(json.dumps([train_config.to_dict(), gen_config.to_dict()]))  # as the JSON holds them
    if [meta["record"].get("train_config"), meta["generator_config"]] != asked:
        raise ValueError(f"{path} holds a generator trained with other configs than this variant asks for; "
                         "remove it or name the variant differently")


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    teacher, spec = create_teacher(args.model, checkpoint=args.checkpoint)
    real = build_eval_loader(args.real_data, spec, batch_size=256, limit=args.num_images)
    results_path = out / "results.json"
    for item in args.variant:
        name, _, text = item.partition("=")
        overrides = parse_overrides(text)
        gen_config, train_config = configs(overrides, spec, args.steps, args.seed)
        path = out / name
        if not (path / META_FILE).exists():
            train_generator(teacher, spec, path, teacher_name=args.model, gen_config=gen_config, config=train_config)
        generator, meta = load_generator(path, teacher_name=args.model, teacher=teacher)
        check_kept(meta, gen_config, train_config, path)
        stream = SyntheticStream(generator, spec.mean, spec.std, batch_size=256, seed=12345,
                                 num_batches=-(-args.num_images // 256))
        report = measure_quality(teacher, stream, real_batches=real)
        row = {"model": args.model, "variant": name, "overrides": text, "steps": meta["record"]["step"],
               "seed": train_config.seed, "train_seconds": meta["record"]["seconds"], **report.to_dict(),
               "train_config": train_config.to_dict(), "generator_config": gen_config.to_dict(),
               "images_per_second": stream_throughput(stream),
               "command": "python -m bench.generator_bench " + shlex.join(sys.argv[1:])}
        rows = read_rows(results_path) if results_path.exists() else []
        rows = [r for r in rows if r["variant"] != name] + [row]
        write_json_atomic(results_path, {"machine": machine(), "rows": rows})
        print(json.dumps({k: row[k] for k in ("variant", "teacher_top1", "diversity_ratio", "pixel_diversity_ratio",
                                               "bn_kl", "train_seconds")}), flush=True)
    rows = read_rows(results_path)
    table = markdown_table(rows, [("variant", "variant"), ("overrides", "overrides"), ("steps", "steps"),
                                  ("train_seconds", "train s"), ("teacher_top1", "teacher top-1"),
                                  ("confidence", "confidence"), ("bn_kl", "BN KL"),
                                  ("diversity_ratio", "feature div vs real"),
                                  ("pixel_diversity_ratio", "pixel div (8x8) vs real")])
    (out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
