"""Drops by seed from dfq_bench's results.json files: one line per (setting, pipeline, source of images, split),
one column per seed, and their mean, so that pipelines are compared over seeds rather than by single rows.

    python -m bench.seed_table runs/bench_report/results.json --split report --method gznq

Several files (one `--out` per variant) get a column naming each line's file; with `--merge` they are read as
one pool instead (one pipeline's seeds run into two files make one line; a seed found twice is refused). Pixel
sets named with their seed at the end (runs/pix_x_s0, runs/pix_x_s1) make one line. `--against K` adds, for every
line, its paired difference from line K (the table's # column): the mean over the seeds both lines have of
(this drop - line K's drop) with its standard error, the comparison that cancels what the seed does to both
(the test images are the same; seed 0 of two lines shares what seed 0 draws).

    python -m bench.seed_table runs/bench_c_gen065/results.json runs/bench_plain_select/results.json \\
        --merge --split select --setting W4A4:paper --against 2

`--value` tabulates another figure of the rows instead of the drop: the agreement with the teacher, the drop's two
parts (`broken`: % of images the teacher gets right and the student wrong; `fixed`: the reverse) or `output_kl`
(the student's mean KL from the teacher's outputs); rows written before a figure existed are left out.

`--any-steps` makes rows that differ only in the step count of their label one line: the noise control at equal
CPU seconds gets its refinement steps matched to each seed's generator row (`noise(141 steps)`, `noise(142
steps)`, ...), and is one pipeline over those seeds, labelled with the counts it pools (`noise(141,142 steps)`).

    python -m bench.seed_table runs/bench_ablation_report/results.json --split report --any-steps --against 1
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

from bench.common import pixel_set_of, read_rows

STEPS = re.compile(r"\((\d+) steps\)")  # "(141 steps)" in a pipeline's label: what --any-steps pools
DECIMALS = {"drop": 2, "agreement": 2, "broken": 2, "fixed": 2, "output_kl": 4}  # the figures, with the places shown


def seed_table(rows: list[dict], *, split: str | None = None, method: str | None = None, contains: str = "",
               model: str | None = None, setting: str | None = None, against: int | None = None,
               value: str = "drop", any_steps: bool = False) -> str:
    """A markdown table of drops (or of another of the rows' figures, `value`, a key of DECIMALS; rows without it
    are left out): a numbered line per (results file when rows carry one, setting, pipeline, generator or pixel
    set (`images_of`), split), a column per seed, and the mean. `against`: the 1-based line to add paired
    differences from (see the module's text). any_steps: "(N steps)" in a pipeline's label counts as any
    count, so that rows of one pipeline whose steps were matched by seed make one line, labelled with the
    counts it pools ("(130,141 steps)").

    Raises:
        ValueError: no row matches the filters, two rows give one line the same seed, `against` names no
            line, or `value` is not one of DECIMALS.
    """
    if value not in DECIMALS:
        raise ValueError(f"unknown value {value!r}; choose one of {', '.join(DECIMALS)}")
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    steps: dict[tuple, set[str]] = defaultdict(set)  # the step counts a line pools (any_steps)
    for r in rows:
        if (r.get(value) is None or (split and r.get("split") != split) or (method and r["method"] != method)
                or contains not in r["pipeline"] or (model and r["model"] != model)
                or (setting and r["setting"] != setting)):
            continue
        pipeline = STEPS.sub("(* steps)", r["pipeline"]) if any_steps else r["pipeline"]
        key = (r.get("results", ""), r["setting"], pipeline, images_of(r), r.get("split", "?"))
        if r["seed"] in groups[key]:
            raise ValueError(f"two rows for seed {r['seed']} of {' / '.join(k for k in key if k)} (two teachers, "
                             "the same row in two files read with --merge, or rows of other steps pooled by "
                             "--any-steps): narrow with --model, or read the files apart")
        groups[key][r["seed"]] = r[value]
        steps[key] |= set(STEPS.findall(r["pipeline"]))
    if not groups:
        raise ValueError(f"no rows {'' if value == 'drop' else f'with {value} '}match; check --split, --method, "
                         "--contains, --setting and --model")
    lines_keys = sorted(groups)
    if against is not None and not 1 <= against <= len(lines_keys):
        raise ValueError(f"--against {against}: the table has lines 1 to {len(lines_keys)}")
    seeds = sorted({s for drops in groups.values() for s in drops})
    several = any(key[0] for key in lines_keys)
    head = ["#"] + (["results"] if several else []) + ["setting", "pipeline", "generator or set", "split"]
    head += [f"seed {s}" for s in seeds] + ["mean" if value == "drop" else f"mean {value}"]
    head += [f"paired vs line {against}"] if against else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    places = DECIMALS[value]
    for number, key in enumerate(lines_keys, 1):
        drops = groups[key]
        results, line_setting, pipeline, images, line_split = key
        if steps[key] and any_steps:  # name the counts pooled: noise(130,141,142 steps)
            pipeline = pipeline.replace("(* steps)", f"({','.join(sorted(steps[key], key=int))} steps)")
        cells = [str(number)] + ([results] if several else []) + [line_setting, pipeline, images, line_split]
        cells += [f"{drops[s]:.{places}f}" if s in drops else "-" for s in seeds]
        cells.append(f"{statistics.fmean(drops.values()):.{places}f} (n={len(drops)})")
        if against:
            cells.append(paired_difference(drops, groups[lines_keys[against - 1]], places))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def images_of(row: dict) -> str:
    """Where a row's images came from: its generator, or its pixel set with a seed ending the name written as
    `_s*` (pix_x_s0, pix_x_s1: one variant over seeds), or "-"."""
    pixels = pixel_set_of(row)
    if pixels is not None:
        return re.sub(rf"_s{row['seed']}$", "_s*", pixels)
    return row.get("generator") or "-"


def paired_difference(figures: dict[int, float], base: dict[int, float], places: int = 2) -> str:
    """mean of figures[s] - base[s] over the seeds both have, +- its standard error (none from one seed)."""
    diffs = [figures[s] - base[s] for s in sorted(figures.keys() & base.keys())]
    if not diffs:
        return "no common seed"
    mean = statistics.fmean(diffs)
    if len(diffs) == 1:
        return f"{mean:+.{places}f} (n=1)"
    return f"{mean:+.{places}f} +- {statistics.stdev(diffs) / math.sqrt(len(diffs)):.{places}f} (n={len(diffs)})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json files written by bench/dfq_bench.py")
    p.add_argument("--split", choices=("select", "report"), help="only rows evaluated on this split")
    p.add_argument("--method", help="only this method's rows (e.g. gznq)")
    p.add_argument("--contains", default="", help="only rows whose pipeline contains this text")
    p.add_argument("--model", help="only this teacher's rows")
    p.add_argument("--setting", help="only this setting's rows (e.g. W4A4:paper)")
    p.add_argument("--merge", action="store_true", help="read several files as one pool of rows")
    p.add_argument("--against", type=int, help="add each line's paired difference from this line (1-based)")
    p.add_argument("--value", choices=tuple(DECIMALS), default="drop", help="the figure to tabulate (default: drop)")
    p.add_argument("--any-steps", action="store_true",
                   help="rows whose labels differ only in '(N steps)' make one line (the noise control's steps, "
                        "matched to each seed's seconds)")
    args = p.parse_args(argv)
    rows = []
    labels = [Path(path).parent.name for path in args.results]
    if len(args.results) > 1 and not args.merge and len(set(labels)) < len(labels):
        p.error(f"files in folders of one name ({', '.join(args.results)}) would share a label: give them folders "
                "of other names, or read them as one pool with --merge")
    for path in args.results:
        if not Path(path).is_file():
            p.error(f"{path!r} is not a file: give results.json files written by bench/dfq_bench.py")
        tag = Path(path).parent.name if len(args.results) > 1 and not args.merge else ""
        rows += [r | {"results": tag} for r in read_rows(path)]
    try:
        print(seed_table(rows, split=args.split, method=args.method, contains=args.contains, model=args.model,
                         setting=args.setting, against=args.against, value=args.value,
                         any_steps=args.any_steps))
    except ValueError as exc:
        p.error(str(exc))


if __name__ == "__main__":
    main()
