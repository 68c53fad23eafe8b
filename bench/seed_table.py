"""Drops by seed from dfq_bench's results.json: one line per (setting, pipeline, split), one column per seed,
and their mean, so that pipelines are compared over seeds rather than by single rows.

    python -m bench.seed_table runs/bench_report/results.json --split report --method gznq
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from bench.common import read_rows


def seed_table(rows: list[dict], *, split: str | None = None, method: str | None = None, contains: str = "",
               model: str | None = None) -> str:
    """A markdown table of drops: a line per (setting, pipeline, generator, split), a column per seed, and
    the mean (rows without a generator show "-" there).

    Raises:
        ValueError: no row matches the filters.
    """
    groups: dict[tuple[str, str, str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if ((split and r.get("split") != split) or (method and r["method"] != method)
                or contains not in r["pipeline"] or (model and r["model"] != model)):
            continue
        groups[(r["setting"], r["pipeline"], r.get("generator") or "-", r.get("split", "?"))][r["seed"]] = r["drop"]
    if not groups:
        raise ValueError("no rows match; check --split, --method, --contains and --model")
    seeds = sorted({s for drops in groups.values() for s in drops})
    lines = ["| setting | pipeline | generator | split | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|---|---|" + "---|" * (len(seeds) + 1)]
    for (setting, pipeline, generator, split_name), drops in sorted(groups.items()):
        cells = [f"{drops[s]:.2f}" if s in drops else "-" for s in seeds]
        mean = statistics.fmean(drops.values())
        lines.append(f"| {setting} | {pipeline} | {generator} | {split_name} | " + " | ".join(cells)
                     + f" | {mean:.2f} (n={len(drops)}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results.json written by bench/dfq_bench.py")
    p.add_argument("--split", choices=("select", "report"), help="only rows evaluated on this split")
    p.add_argument("--method", help="only this method's rows (e.g. gznq)")
    p.add_argument("--contains", default="", help="only rows whose pipeline contains this text")
    p.add_argument("--model", help="only this teacher's rows")
    args = p.parse_args(argv)
    print(seed_table(read_rows(args.results), split=args.split, method=args.method, contains=args.contains,
                     model=args.model))


if __name__ == "__main__":
    main()
