"""The align figures of runs, as benchmarks/results/*-align-cpu.md quotes them: stage seconds, each logged align
figure first -> last quarter (summary.json `align.figures`), and the held-out metrics base / SFT / aligned with
aligned - SFT paired per paragraph (metrics.json `metrics`, `vs_sft`).

    python -m benchmarks.align_report RUN [RUN ...]      # ids, prefixes or folders, as polo list names them
"""
from __future__ import annotations

import sys

from polo_lib import runs


def _f(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def report(run_ref: str) -> str:
    run = runs.lookup(run_ref)
    manifest, summary = run.manifest(), run.summary()
    lines = [f"### {run.id} ({summary.align.method if summary.align else 'no align'})", "",
             f"stage seconds: {({k: v.get('seconds') for k, v in manifest['stages'].items()})}", ""]
    if summary.align:
        lines += ["| figure | first | last |", "|---|---|---|"]
        lines += [f"| {k} | {v['first']} | {v['last']} |" for k, v in summary.align.figures.items()]
    body = run.evaluation().metrics()
    lines += ["", f"held-out: {body['examples']} {body['split']} paragraphs; rewarded: {body.get('rewarded')}", "",
              "| metric | base | SFT | aligned | aligned - SFT [95%] | p | verdict |", "|---|---|---|---|---|---|---|"]
    for k, v in body["metrics"].items():
        w = body.get("vs_sft", {}).get(k, {})
        lines.append(f"| {k} | {_f(v['base'])} | {_f(w.get('base'))} | {_f(v['tuned'])} | {_f(w.get('delta'))} "
                     f"[{_f(w.get('delta_low'))}, {_f(w.get('delta_high'))}] | {_f(w.get('p_value'))} | "
                     f"{w.get('verdict')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print("\n".join(report(r) for r in sys.argv[1:]))
