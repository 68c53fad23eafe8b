"""Agreement and drop by image source, over every matching row of dfq_bench's results files: is one source's
student closer to its teacher than another's, seen over many runs at once?

    python -m bench.agreement_by_source runs/*/results.json --setting W4A4:paper --split select

Sources, from rows with the default pipeline's options only: real images (`real-recon`), generator samples
refined (`gznq`, or `gznq[refine.steps=10]`, the default at 4 bits since; rows that name their generator), the
raw samples (`gznq-raw`), and noise refined N steps (`noise(N steps)`).
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict

from bench.common import read_rows


def source_of(row: dict) -> str | None:
    """The source a row's student was made from, or None for a row with other options."""
    pipeline, method = row["pipeline"], row["method"]
    if method == "real-recon" and pipeline == "real-recon":
        return "real images"
    if method == "gznq" and pipeline in ("gznq", "gznq[refine.steps=10]") and row.get("generator"):
        return "generator samples, refined"
    if method == "gznq-raw" and pipeline == "gznq-raw":
        return "generator samples, raw"
    if method == "noise" and re.fullmatch(r"noise\(\d+ steps\)", pipeline):
        return pipeline
    return None


def by_source(rows: list[dict], *, setting: str, split: str) -> str:
    """A markdown table: per source, rows, generators, agreement min / max / mean, mean drop."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        source = source_of(r) if r.get("setting") == setting and r.get("split") == split else None
        if source is not None:
            groups[source].append(r)
    if not groups:
        raise ValueError(f"no row of {setting} on {split} with the default options")
    lines = ["| source | rows | generators | agreement min | max | mean | drop, mean |", "|---|---|---|---|---|---|---|"]
    for source, members in sorted(groups.items(), key=lambda g: -statistics.fmean(r["agreement"] for r in g[1])):
        agree = [r["agreement"] for r in members]
        generators = len({r.get("generator") for r in members if r.get("generator")})
        lines.append(f"| {source} | {len(members)} | {generators} | {min(agree):.2f} | {max(agree):.2f} | "
                     f"{statistics.fmean(agree):.2f} | {statistics.fmean(r['drop'] for r in members):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json files written by bench/dfq_bench.py")
    p.add_argument("--setting", default="W4A4:paper")
    p.add_argument("--split", default="select", choices=("select", "report"))
    args = p.parse_args(argv)
    rows = [r for path in args.results for r in read_rows(path)]
    try:
        print(by_source(rows, setting=args.setting, split=args.split))
    except ValueError as exc:
        p.error(str(exc))


if __name__ == "__main__":
    main()
