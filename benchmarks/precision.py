"""16-bit vs NF4 on this machine: the CPU demo's data, steps and evaluation, once per precision.

`python -m benchmarks precision` trains and evaluates params/cpu.yaml (float32 weights) and
params/cpu_qlora.yaml (the same recipe on an NF4 base: bitsandbytes' CPU backend through Unsloth's
CPU loader), each in a fresh process of its own (`python -m benchmarks.precision PARAMS OUT.json`)
so that its peak resident memory is its own. Figures per precision: training tokens/s, peak RSS, the
eval-loss curve, the final evaluation's metrics, and the number of Linear4bit layers the model held.

What this says about a GPU: nothing about speed (bitsandbytes' CPU kernels dequantize each weight
to fp32 for every matmul; on a GPU the NF4 kernels are different code) and little about memory
(a 135M model's weights are a small share of a CPU process's RSS). It shows that the quantized
recipe trains and evaluates end to end, and what NF4's rounding does to the loss and the metrics.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

PAIR = ("cpu", "cpu_qlora")
# The task metrics during training add ~2 min of generation per precision and do not differ by
# precision in kind: off here, so the two runs measure training and the final evaluation.
DEFAULT_SETS = {"evaluation.during_training": 0}


def run_one(params_file: str, overrides: dict, out: Path) -> dict:
    """Prepare, train and evaluate one params file in this process; the figures as a dict."""
    from polo_lib import device, pipeline, runs
    from polo_lib.model import import_unsloth

    import_unsloth()  # before polo_lib.train pulls in transformers and TRL
    from polo_lib.model import count_4bit_layers
    from polo_lib.train import read_train_log

    cfg = pipeline.resolve(params_file, overrides)
    run = runs.open_run(cfg)
    start = time.perf_counter()
    pipeline.prepare_stage(cfg, run)
    session = pipeline.train_stage(cfg, run, live=False)
    train_seconds = time.perf_counter() - start
    four_bit_layers = count_4bit_layers(session.lm.model)
    del session
    pipeline.evaluate_stage(cfg, run)
    summary = run.summary()
    log = read_train_log(run.logs / "train_log.csv")
    evals = log[log["eval_loss"].notna()].drop_duplicates("step", keep="last")
    evaluation = summary.evaluation
    figures = {
        "params": params_file, "run": run.id, "precision": device.Decisions.from_dict(
            run.manifest()["decisions"]).precision,
        "linear4bit_layers": four_bit_layers,
        "steps": summary.training.steps, "tokens_per_s": summary.training.tokens_per_s,
        "train_and_prepare_seconds": round(train_seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
        "loss_first": summary.training.loss_first, "loss_last": summary.training.loss_last,
        "eval_loss_curve": [[int(s), round(float(v), 4)] for s, v in zip(evals["step"], evals["eval_loss"])],
        "final_metrics": {"base": dict(evaluation.base), "tuned": dict(evaluation.tuned)} if evaluation else None,
    }
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def bench_precision(overrides: dict | None = None, pair: tuple[str, str] = PAIR) -> dict:
    """Each params file of `pair` in its own process, one after the other; their figures side by side."""
    import tempfile

    sets = {**DEFAULT_SETS, **(overrides or {})}
    out: dict = {"pair": list(pair), "sets": sets, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="polo-precision-") as tmp:
        for name in pair:
            target = Path(tmp) / f"{name}.json"
            command = [sys.executable, "-m", "benchmarks.precision", name, str(target),
                       *(f"{k}={json.dumps(v)}" for k, v in sets.items())]  # JSON is YAML: parse_sets reads it
            print(f"[precision] {name}: {' '.join(command[1:])}", flush=True)
            done = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            out["runs"][name] = json.loads(target.read_text(encoding="utf-8")) if done.returncode == 0 else \
                {"error": f"exit {done.returncode}"}
    return out


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(p: dict) -> list[str]:
    runs = p["runs"]
    names = [n for n in p["pair"] if "error" not in runs[n]]
    lines = ["## 16-bit vs NF4 on this CPU: the demo's data and steps", "",
             f"`{'` vs `'.join(p['pair'])}`, each prepared, trained and evaluated in a fresh process "
             f"(`python -m benchmarks precision`; sets {p['sets']}).", "",
             "| figure | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    rows = [("precision", "precision"), ("Linear4bit layers", "linear4bit_layers"), ("steps", "steps"),
            ("training tokens/s", "tokens_per_s"), ("prepare + train s", "train_and_prepare_seconds"),
            ("peak RSS GiB", "peak_rss_gib"), ("loss first", "loss_first"), ("loss last", "loss_last")]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(_cell(runs[n].get(key)) for n in names) + " |")
    lines.append("| eval loss by step | " + " | ".join(
        ", ".join(f"{s}: {v}" for s, v in runs[n]["eval_loss_curve"]) for n in names) + " |")
    for which in ("base", "tuned"):
        scores = {n: (runs[n].get("final_metrics") or {}).get(which) or {} for n in names}
        for k in sorted({k for n in names for k, v in scores[n].items() if isinstance(v, (int, float))}):
            lines.append(f"| {which} {k} | " + " | ".join(_cell(scores[n].get(k)) for n in names) + " |")
    lines += ["", "Read on a CPU only: bitsandbytes' CPU backend dequantizes each NF4 weight for every matmul, "
              "so neither the speed nor (at 135M parameters) the memory says what a GPU will do; the losses "
              "and metrics say what NF4's rounding costs the recipe.", ""]
    for n in p["pair"]:
        if "error" in runs[n]:
            lines.append(f"- `{n}` failed: {runs[n]['error']}")
    return lines


if __name__ == "__main__":
    from polo_lib.cli import parse_sets

    name, target, *sets = sys.argv[1:]
    run_one(name, parse_sets(sets), Path(target))
