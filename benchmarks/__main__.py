"""`make bench` / `python -m benchmarks [generation] [--params cpu] [--repeats 3]`.

generation: the same prompts through polo_lib.evaluate.generate, batched vs one at a time,
alternated, median tokens/s over repeats. Writes benchmarks/results/<date>-<host>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    from polo_lib import model, runs

    device = model.device_info()
    return {"host": socket.gethostname(), "cpu": model._cpu_name(), "device": device["device"],
            "device_name": device["name"], "memory_total_gib": round(device["memory_total"] / 2 ** 30, 1),
            "threads": device.get("threads"), "python": platform.python_version(), "versions": runs.package_versions()}


def bench_generation(params_file: str, repeats: int, examples: int, max_new_tokens: int, batch_size: int) -> dict:
    """Batched (left padding) vs unbatched greedy generation on the same prompts."""
    from polo_lib import data, evaluate, params

    cfg = params.load(params_file)
    dataset = data.load_processed(cfg.data)
    split = dataset["test"].select(range(min(examples, len(dataset["test"]))))
    chats = evaluate.chats_of(split)
    lm = evaluate.load_base(cfg)
    evaluate.generate(lm, chats[:1], max_new_tokens=4)  # warm-up: kernels, caches
    rates: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(repeats):
        for mode, size in (("batched", batch_size), ("one_at_a_time", 1)):  # alternated
            start = time.perf_counter()
            out = evaluate.generate(lm, chats, max_new_tokens=max_new_tokens, batch_size=size)
            seconds = time.perf_counter() - start
            rates[mode].append(sum(g.new_tokens for g in out) / seconds)
    medians = {m: round(statistics.median(r), 2) for m, r in rates.items()}
    return {"params": params_file, "model": cfg.model.model_name, "examples": len(chats),
            "max_new_tokens": max_new_tokens, "batch_size": batch_size, "repeats": repeats,
            "tokens_per_s": medians, "all_runs": rates,
            "ratio_batched_over_single": round(medians["batched"] / medians["one_at_a_time"], 2)}


DIRECT = """
import os, sys, time
from polo_lib.model import import_unsloth
import_unsloth()
from polo_lib import data, model, params, runs, train
cfg = params.load(sys.argv[1])
run = runs.open_run(cfg, stage="train")
tok = model.load_tokenizer(cfg.model)
data.save(data.prepare(cfg.data, tok, cfg.model.max_seq_length), cfg.data)
lm = model.load(cfg)
session = train.build(lm, data.load_processed(cfg.data), cfg, run, live=False)
train.fit(session)
train.finish(session)
run.finish_stage("train")
"""


def bench_overhead(params_file: str, repeats: int) -> dict:
    """`polo run PARAMS --stages prepare,train` vs the same library calls in one plain process.

    Both start a fresh interpreter (as a user would); polo adds the preflight checks, one
    Jupyter kernel per notebook and the notebooks' display work.
    """
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    python = sys.executable
    commands = {
        "polo_run": [python, "-m", "polo_lib.cli", "run", params_file, "--stages", "prepare,train"],
        "direct": [python, "-c", DIRECT, params_file],
    }
    seconds: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():  # alternated
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "POLO_OUTPUTS": f"{tmp}/outputs", "POLO_PROCESSED_DIR": f"{tmp}/processed"}
                start = time.perf_counter()
                subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - start)
    med = {k: round(statistics.median(v), 2) for k, v in seconds.items()}
    return {"params": params_file, "repeats": repeats, "median_seconds": med, "all_runs": seconds,
            "overhead_seconds": round(med["polo_run"] - med["direct"], 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("which", nargs="*", default=["generation", "overhead"], choices=["generation", "overhead"])
    parser.add_argument("--params", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    from polo_lib.model import import_unsloth

    import_unsloth()
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    if "generation" in args.which:
        result["generation"] = bench_generation(args.params, args.repeats, args.examples,
                                                args.max_new_tokens, args.batch_size)
    if "overhead" in args.which:
        result["overhead"] = bench_overhead("smoke", args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{datetime.now(timezone.utc):%Y-%m-%d}-{result['machine']['host']}"
    path = RESULTS / f"{stem}.json"
    if path.exists():  # the same day and machine: keep the benchmarks not rerun now
        result = {**json.loads(path.read_text(encoding="utf-8")), **result}
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Benchmarks {result['date']}", "", f"Machine: {result['machine']['cpu']}, "
             f"{result['machine']['device']} ({result['machine']['device_name']}), {result['machine']['threads']} threads", ""]
    if "generation" in result:
        g = result["generation"]
        lines += ["## Generation: batched vs one at a time", "",
                  f"{g['model']}, {g['examples']} test prompts, {g['max_new_tokens']} new tokens max, greedy, "
                  f"median of {g['repeats']} alternated repeats", "",
                  "| mode | tokens/s |", "|---|---|",
                  f"| batched (batch {g['batch_size']}) | {g['tokens_per_s']['batched']} |",
                  f"| one at a time | {g['tokens_per_s']['one_at_a_time']} |",
                  f"| ratio | {g['ratio_batched_over_single']}x |", ""]
    if "overhead" in result:
        o = result["overhead"]
        lines += ["## Workspace overhead: `polo run` vs the same calls in a plain process", "",
                  f"params `{o['params']}` (prepare + train), fresh process each, median of {o['repeats']} alternated", "",
                  "| path | seconds |", "|---|---|",
                  f"| polo run (preflight + papermill, one kernel per notebook) | {o['median_seconds']['polo_run']} |",
                  f"| direct library calls | {o['median_seconds']['direct']} |",
                  f"| overhead | {o['overhead_seconds']} |", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
