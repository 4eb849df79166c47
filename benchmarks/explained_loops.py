"""Loops in `polo explain` outputs of several runs on one paper, each against the first (the SFT model):
paragraphs that loop, the longest repeated phrase and distinct-2 per paragraph, paired per paragraph with
polo_lib.stats.compare (bootstrap interval, exact permutation p). Reads <run>/explained/<paper>.json.

    python -m benchmarks.explained_loops PAPER RUN_FOLDER [RUN_FOLDER ...] [--label NAME ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from polo_lib import stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paper", help="the paper explained (its file name without the suffix names the outputs)")
    ap.add_argument("runs", nargs="+", type=Path, help="run folders; the first is the one the others are against")
    ap.add_argument("--label", action="append", default=[], help="a name per run, in order")
    args = ap.parse_args(argv)
    labels = args.label + [r.name for r in args.runs[len(args.label):]]
    loops = []
    for run in args.runs:
        path = run / "explained" / f"{Path(args.paper).stem}.json"
        if not path.is_file():
            print(f"{path}: missing; run `polo explain {run} {args.paper}` first", file=sys.stderr)
            return 2
        loops.append(json.loads(path.read_text(encoding="utf-8"))["loops"])
    print("| model | paragraphs looping | longest repeat (tokens) | vs first [95%], p | distinct-2 | "
          "vs first [95%], p |")
    print("|---|---|---|---|---|---|")
    first = loops[0]
    for label, body in zip(labels, loops):
        cells = [label, f"{body['looping']} of {body['paragraphs']}"]
        for key, better in (("longest_repeat", False), ("distinct_2", True)):
            mean = sum(body[key]) / len(body[key])
            cells.append(f"{mean:.3g}")
            if body is first:
                cells.append("-")
                continue
            c = stats.compare(first[key], body[key], higher_is_better=better)
            cells.append(f"{c.delta:+.3g} [{c.delta_low:+.3g}, {c.delta_high:+.3g}], p {c.p_value:.2g}: {c.verdict}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
