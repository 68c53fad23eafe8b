"""Drops by seed from dfq_bench's results.json: one line per (setting, pipeline), one column per seed, and
their mean, so that pipelines are compared over seeds rather than by single rows.

    python bench/seed_table.py runs/bench_dfq/results.json --method gznq --contains "batch 256"
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import read_rows  # noqa: E402


def seed_table(rows: list[dict], *, method: str | None = None, contains: str = "", model: str | None = None) -> str:
    groups: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for r in rows:
        if (method and r["method"] != method) or contains not in r["pipeline"] or (model and r["model"] != model):
            continue
        groups[(r["setting"], r["pipeline"])][r.get("seed", 0)] = r["drop"]
    if not groups:
        raise ValueError("no rows match; check --method, --contains and --model")
    seeds = sorted({s for drops in groups.values() for s in drops})
    lines = ["| setting | pipeline | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for (setting, pipeline), drops in sorted(groups.items()):
        cells = [f"{drops[s]:.2f}" if s in drops else "-" for s in seeds]
        mean = statistics.fmean(drops.values())
        lines.append(f"| {setting} | {pipeline} | " + " | ".join(cells) + f" | {mean:.2f} (n={len(drops)}) |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results.json written by bench/dfq_bench.py")
    p.add_argument("--method", help="only this method's rows (e.g. gznq)")
    p.add_argument("--contains", default="", help="only rows whose pipeline contains this text")
    p.add_argument("--model", help="only this teacher's rows")
    args = p.parse_args(argv)
    print(seed_table(read_rows(args.results), method=args.method, contains=args.contains, model=args.model))


if __name__ == "__main__":
    main()
