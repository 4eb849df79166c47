"""`make bench` / `python -m benchmarks [training] [generation] [overhead] [whole-job] [options]`.

training    the same model, data, batches, steps and seed through (a) polo_lib's training path,
            (b) a bare Unsloth + TRL script and (c) transformers + PEFT with transformers.Trainer
            (benchmarks/training/), each run in its own process, the order rotated every repeat;
            tokens/s after warm-up, peak memory, per-step losses (which must agree).
generation  the same prompts through polo_lib.inference.generate, batched vs one at a time.
overhead    `polo run` (preflight + papermill) vs the same library calls in a plain process.
whole-job   `make setup`, `make demo`, `make test` on a fresh clone of HEAD (~20 min on 2 cores).
precision   the CPU demo in 16-bit (params cpu) vs NF4 (cpu_qlora): tokens/s, peak RSS, eval loss
            curve, final metrics, each in a fresh process (benchmarks/precision.py).

Medians over --repeats; results merge into benchmarks/results/<date>-<host>.json and .md.
GPU: benchmarks/gpu_check.sh runs training + generation with the 3B recipe; benchmarks/device_check.sh
runs them at the 3B shape (random weights) on a bare offline GPU machine, in fp16 and bf16
(`--set model.dtype=float16|bfloat16`, passed to all three paths through the settings JSON).
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
    from polo_lib import device as device_lib
    from polo_lib import runs

    device = device_lib.describe()
    return {"host": socket.gethostname(), "cpu": device_lib.cpu_name(), "device": device.kind,
            "device_name": device.name, "memory_total_gib": round(device.memory_total / 2 ** 30, 1),
            "compute_capability": device.as_dict().get("compute_capability"),
            "threads": device.threads, "python": platform.python_version(), "versions": runs.package_versions()}


def bench_generation(params_file: str, repeats: int, examples: int, max_new_tokens: int, batch_size: int,
                     overrides: dict | None = None) -> dict:
    """Batched (left padding) vs unbatched greedy generation on the same prompts."""
    from polo_lib import data, inference, model, params
    from polo_lib.errors import PoloError

    cfg = params.load(params_file, overrides=overrides)
    try:
        dataset = data.load_processed(cfg.data)
    except PoloError:  # not prepared yet (e.g. the GPU check on a fresh machine)
        tokenizer = model.load_tokenizer(cfg.model)
        data.save(data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length), cfg.data)
        dataset = data.load_processed(cfg.data)
    split = dataset["test"].select(range(min(examples, len(dataset["test"]))))
    chats = inference.chats_of(split)
    lm = inference.load_base(cfg)
    inference.generate(lm, chats[:1], max_new_tokens=4)  # warm-up: kernels, caches
    rates: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(repeats):
        for mode, size in (("batched", batch_size), ("one_at_a_time", 1)):  # alternated
            start = time.perf_counter()
            out = inference.generate(lm, chats, max_new_tokens=max_new_tokens, batch_size=size)
            seconds = time.perf_counter() - start
            rates[mode].append(sum(g.new_tokens for g in out) / seconds)
    medians = {m: round(statistics.median(r), 2) for m, r in rates.items()}
    return {"params": params_file, "model": cfg.model.model_name, "examples": len(chats),
            "max_new_tokens": max_new_tokens, "batch_size": batch_size, "repeats": repeats,
            "tokens_per_s": medians, "all_runs": rates,
            "ratio_batched_over_single": round(medians["batched"] / medians["one_at_a_time"], 2)}


TRAINING_DIR = Path(__file__).resolve().parent / "training"
TRAINING_PATHS = {"polo": "polo.py", "unsloth_trl": "unsloth_trl.py", "peft_trainer": "peft_trainer.py"}


def training_settings(cfg, params_file: str, overrides: dict, work: Path, warmup: int) -> dict:
    """One settings dict for the three paths, from the params (so (b) and (c) copy the recipe
    field for field); the train split is written as chat JSONL in the order polo_lib prepared it."""
    from polo_lib import data, local_models, model, train
    from polo_lib import device as device_lib

    tokenizer = model.load_tokenizer(cfg.model)
    data.save(data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length), cfg.data)
    train_file = work / "train.jsonl"
    with open(train_file, "w", encoding="utf-8") as f:
        for messages in data.load_processed(cfg.data)["train"]["messages"]:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    markers = train.derive_markers(tokenizer)
    decisions = device_lib.decide_for(cfg)  # what polo_lib applies here; (b) and (c) get the same
    t, lora = cfg.training, cfg.lora
    schedule = train.plan(t, len(data.load_processed(cfg.data)["train"]))  # warmup resolved as polo_lib does
    return {
        "params_file": params_file, "polo_overrides": overrides,
        "model_path": local_models.resolve(cfg.model.model_name), "train_file": str(train_file),
        "output_dir": str(work / "trainer"), "max_seq_length": cfg.model.max_seq_length,
        "load_in_4bit": cfg.model.load_in_4bit, "lora_r": lora.r, "lora_alpha": lora.lora_alpha,
        "lora_dropout": lora.lora_dropout, "target_modules": list(lora.target_modules),
        "gradient_checkpointing": decisions.gradient_checkpointing, "dtype": decisions.dtype,
        "batch_size": t.per_device_train_batch_size, "accumulation": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate, "lr_warmup_steps": schedule.warmup_steps, "scheduler": t.lr_scheduler_type,
        "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
        "optim": decisions.optim, "seed": t.seed,
        "max_steps": t.max_steps, "warmup_steps": warmup,
        "instruction_part": markers.instruction, "response_part": markers.response,
    }


def loss_agreement(reference: list[float], other: list[float]) -> float:
    """Largest relative difference of the per-step training losses (0.01 = 1%)."""
    return max(abs(a - b) / abs(a) for a, b in zip(reference, other))


def run_path(cmd: list[str], cwd: str, env: dict[str, str], log=print) -> tuple[int, str]:
    """Run one training path; its output passes through line by line as it comes (unbuffered
    child, flushed here), so a caller that logs this process (the device check) keeps it even
    when it kills us mid-path. Returns (exit code, the last 60 lines)."""
    import collections
    import subprocess

    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)
    return proc.returncode, "".join(tail)


def summarize_training(runs: dict[str, list[dict]], paths: list[str], tolerance: float, head: dict) -> dict:
    """The comparison over the paths that have finished so far (all of them at the end): medians,
    agreement with the reference (the first finished path, (a) unless it has not run), ratios.

    Agreement: the same non-padding tokens per step (same batches), the same labelled tokens per
    example (same masking: exact, whatever the precision) and per-step losses within `tolerance`."""
    done = [p for p in paths if runs.get(p)]
    medians = {}
    for name in done:
        results = runs[name]
        med = {"tokens_per_s": statistics.median(x["tokens_per_s"] for x in results),
               "peak_rss_mib": statistics.median(x["peak_rss_mib"] for x in results),
               "load_seconds": statistics.median(x["load_seconds"] for x in results),
               "final_loss": results[0]["losses"][-1], "trainable_params": results[0]["trainable_params"],
               "label_tokens": sum(results[0]["label_tokens"]) if results[0].get("label_tokens") else None}
        if "cuda_max_allocated_mib" in results[0]:
            med["cuda_max_allocated_mib"] = statistics.median(x["cuda_max_allocated_mib"] for x in results)
        medians[name] = {k: round(v, 4) if isinstance(v, float) else v for k, v in med.items()}
    complete = all(len(runs.get(p, [])) >= head.get("repeats", 1) for p in paths)
    out = {**head, "tolerance": tolerance, "paths": paths, "paths_done": done, "complete": complete,
           "median": medians, "agreement": {}, "ratios": {}, "losses_agree": False, "all_runs": runs}
    if not done:
        return out
    reference = done[0]
    ref = runs[reference][0]
    out.update(reference=reference, tokens_per_step=ref["tokens_per_step"])
    for name in done:
        other = runs[name][0]
        out["agreement"][name] = {
            "same_tokens_per_step": other["tokens_per_step"] == ref["tokens_per_step"],
            "same_label_tokens": other.get("label_tokens") is not None
            and other.get("label_tokens") == ref.get("label_tokens"),
            "max_relative_loss_difference": float(f"{loss_agreement(ref['losses'], other['losses']):.3g}"),
            "repeatable": all(x["losses"] == other["losses"] for x in runs[name]),
        }
    out["losses_agree"] = len(done) > 1 and all(
        a["same_tokens_per_step"] and a["same_label_tokens"] and a["max_relative_loss_difference"] <= tolerance
        for a in out["agreement"].values())
    memory_key = "cuda_max_allocated_mib" if "cuda_max_allocated_mib" in medians[reference] else "peak_rss_mib"
    out["memory_metric"] = memory_key
    for name in done[1:]:
        out["ratios"][f"{reference}/{name}"] = {
            "tokens_per_s": round(medians[reference]["tokens_per_s"] / medians[name]["tokens_per_s"], 3),
            memory_key: round(medians[reference][memory_key] / medians[name][memory_key], 3)}
    return out


def bench_training(params_file: str, overrides: dict, repeats: int, warmup: int, steps: int,
                   tolerance: float, paths: list[str], log=print, on_path=None) -> dict:
    """(a) polo_lib vs (b) bare Unsloth + TRL vs (c) transformers + PEFT, same model, data, order,
    lengths, batch, steps and seed; each run a fresh process, the order rotated every repeat.

    `on_path(summary)` is called the moment each path ends, with the comparison so far, so a
    caller can write it down before the next path starts (a time box may kill us during it)."""
    import tempfile

    from polo_lib import params
    from polo_lib import paths as polo_paths

    total = warmup + steps
    # logging_steps 1: the per-step losses compared below (default.yaml logs every 10 steps)
    overrides = {**overrides, "training.max_steps": total, "training.eval_steps": total, "training.logging_steps": 1,
                 "training.save_steps": total, "training.early_stopping_patience": 0}
    cfg = params.load(params_file, overrides=overrides)
    runs: dict[str, list[dict]] = {p: [] for p in paths}
    with tempfile.TemporaryDirectory(prefix="polo-bench-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "POLO_OUTPUTS": f"{tmp}/outputs", "POLO_PROCESSED_DIR": f"{tmp}/processed",
               # the same compiled-kernel cache for every path (and no unsloth_compiled_cache/ in the tree)
               "UNSLOTH_COMPILE_LOCATION": str(polo_paths.unsloth_compile_dir())}
        saved = {k: os.environ.get(k) for k in ("POLO_OUTPUTS", "POLO_PROCESSED_DIR")}
        os.environ.update({k: env[k] for k in saved})  # prepare the data into the scratch folder
        try:
            settings = training_settings(cfg, params_file, overrides, work, warmup)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        (work / "settings.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
        head = {"params": params_file, "overrides": dict(overrides), "model": cfg.model.model_name,
                "model_path": settings["model_path"], "dtype": settings["dtype"],
                "batch_size": settings["batch_size"], "accumulation": settings["accumulation"],
                "warmup_steps": warmup, "measured_steps": steps, "repeats": repeats}
        for r in range(repeats):
            order = paths[r % len(paths):] + paths[: r % len(paths)]  # alternated: abc, bca, cab
            for name in order:
                out = work / f"{name}-{r}.json"
                cmd = [sys.executable, str(TRAINING_DIR / TRAINING_PATHS[name]), str(work / "settings.json"), str(out)]
                log(f"[training] repeat {r + 1}/{repeats}: {name} ...")
                code, tail = run_path(cmd, tmp, env)
                if code != 0:
                    raise RuntimeError(f"training path {name} failed (exit {code}):\n{tail[-3000:]}")
                runs[name].append(json.loads(out.read_text(encoding="utf-8")))
                log(f"[training]   {runs[name][-1]['tokens_per_s']} tokens/s, "
                    f"peak RSS {runs[name][-1]['peak_rss_mib']} MiB, losses {runs[name][-1]['losses']}")
                if on_path:
                    on_path(summarize_training(runs, paths, tolerance, head))
    return summarize_training(runs, paths, tolerance, head)


DIRECT = """
import sys
from polo_lib.model import import_unsloth
import_unsloth()
from polo_lib import params, pipeline, runs
cfg = params.load(sys.argv[1])
pipeline.prepare_stage(cfg)
pipeline.train_stage(cfg, runs.open_run(cfg, stage="train"), live=False)
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
    from polo_lib import local_models, params, paths

    model_cache = paths.model_cache_dir()
    local_models.resolve(params.load(params_file).model.model_name)  # built (once) before anything is timed
    seconds: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():  # alternated
            with tempfile.TemporaryDirectory() as tmp:
                # fresh outputs, but this machine's model cache: the model is built once, not timed
                env = {**os.environ, "POLO_OUTPUTS": f"{tmp}/outputs", "POLO_PROCESSED_DIR": f"{tmp}/processed",
                       "POLO_MODEL_CACHE": str(model_cache)}
                start = time.perf_counter()
                subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
                seconds[name].append(time.perf_counter() - start)
    med = {k: round(statistics.median(v), 2) for k, v in seconds.items()}
    return {"params": params_file, "repeats": repeats, "median_seconds": med, "all_runs": seconds,
            "overhead_seconds": round(med["polo_run"] - med["direct"], 2)}


def bench_whole_job(log=print) -> dict:
    """`make setup`, `make demo` and `make test` on a fresh clone of HEAD, as a new user runs them.

    Demo stages (prepare, train, evaluate) come from the demo run's summary.json; install is
    `make setup` (pip's cache is warm here: a first install also downloads the packages).
    """
    import glob
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                            check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POLO_", "UNSLOTH_COMPILE", "VIRTUAL_ENV"))}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="polo-clone-") as tmp:
        clone = Path(tmp) / "polo"
        subprocess.run(["git", "clone", "--quiet", str(root), str(clone)], check=True)
        for step, target in (("install (make setup)", "setup"), ("make demo (after setup)", "demo"),
                             ("make test (after setup)", "test")):
            log(f"[whole-job] make {target} ...")
            start = time.perf_counter()
            done = subprocess.run(["make", target], cwd=clone, env=env, capture_output=True, text=True)
            seconds[step] = round(time.perf_counter() - start, 1)
            if done.returncode != 0:
                raise RuntimeError(f"make {target} failed on the fresh clone:\n"
                                   f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
            if target == "demo":
                summary = json.loads(Path(sorted(glob.glob(f"{clone}/outputs/runs/*/summary.json"))[-1]).read_text())
                for stage, s in summary["stage_seconds"].items():
                    seconds[f"  demo stage: {stage}"] = s
            if target == "test":
                seconds["  test summary"] = done.stdout.strip().splitlines()[-1]
    return {"commit": commit, "seconds": seconds}


BENCHMARKS = ["training", "generation", "overhead", "whole-job", "precision"]
# whole-job clones the repo and takes ~20 min; precision trains and evaluates the demo twice (~15 min)
DEFAULT = ["training", "generation", "overhead"]


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Benchmarks {result['date']}", "",
             f"Machine: {m['cpu']}, {m['device']} ({m['device_name']}, {m['memory_total_gib']} GiB), "
             f"{m['threads']} threads; torch {m['versions'].get('torch')}, unsloth {m['versions'].get('unsloth')}, "
             f"transformers {m['versions'].get('transformers')}, trl {m['versions'].get('trl')}, "
             f"peft {m['versions'].get('peft')}", ""]
    if "training" in result and result["training"].get("paths_done"):
        tr = result["training"]
        mem = tr["memory_metric"]
        names = {"polo": "(a) polo_lib", "unsloth_trl": "(b) bare Unsloth + TRL",
                 "peft_trainer": "(c) transformers + PEFT (Trainer)"}
        ref = names.get(tr["reference"], tr["reference"])
        lines += ["## Training: polo_lib vs bare Unsloth + TRL vs transformers + PEFT", "",
                  f"`{tr['params']}` ({tr['model']}), batch {tr['batch_size']} x {tr['accumulation']}, "
                  f"{tr['warmup_steps']} warm-up + {tr['measured_steps']} measured steps "
                  f"({sum(tr['tokens_per_step'][tr['warmup_steps']:])} tokens), each run a fresh process, "
                  f"order rotated, median of {tr['repeats']}.", ""]
        if not tr.get("complete", True):
            lines += [f"**Incomplete**: only {', '.join(tr['paths_done'])} finished (of {', '.join(tr['paths'])}).", ""]
        lines += [f"| path | tokens/s | {mem.replace('_mib', ' (MiB)').replace('_', ' ')} | load s | "
                  f"final loss | labelled tokens | max rel. loss diff vs {ref} |", "|---|---|---|---|---|---|---|"]
        for name, med in tr["median"].items():
            lines.append(f"| {names.get(name, name)} | {med['tokens_per_s']} | {med[mem]} | {med['load_seconds']} | "
                         f"{med['final_loss']} | {med.get('label_tokens')} | "
                         f"{tr['agreement'][name]['max_relative_loss_difference']:.2g} |")
        if tr["ratios"]:
            lines += ["", "| ratio | tokens/s | memory |", "|---|---|---|"]
            for name, r in tr["ratios"].items():
                lines.append(f"| {name} | {r['tokens_per_s']}x | {r[mem]}x |")
        lines += ["", f"Every path saw the same tokens per step and trained the same labelled tokens per example, "
                  f"and the per-step losses agree within {tr['tolerance']:g} (relative): "
                  f"**{'yes' if tr['losses_agree'] else 'NO: the comparison is void'}**.", ""]
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
                  f"params `{o['params']}` (prepare + train), fresh process each, "
                  f"median of {o['repeats']} alternated", "",
                  "| path | seconds |", "|---|---|",
                  f"| polo run (preflight + papermill, one kernel per notebook) | {o['median_seconds']['polo_run']} |",
                  f"| direct library calls | {o['median_seconds']['direct']} |",
                  f"| overhead | {o['overhead_seconds']} |", ""]
    if "whole_job" in result:
        w = result["whole_job"]
        lines += ["## Whole job on a fresh clone", "", f"`git clone` of {w['commit'][:10]} into a new folder, "
                  "pip's download cache warm (a first install also downloads ~1 GB).", "",
                  "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in w["seconds"].items()]
        lines.append("")
    if "precision" in result:
        from benchmarks.precision import markdown as precision_markdown

        lines += precision_markdown(result["precision"])
    return "\n".join(lines)


def main(argv=None) -> int:
    from polo_lib.cli import parse_sets

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", nargs="*", default=DEFAULT, choices=BENCHMARKS)
    parser.add_argument("--params", default="cpu", help="params file for training and generation")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="params override, e.g. --set model.model_name=/models/llama-3.2-3b")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=1, help="training steps not measured")
    parser.add_argument("--steps", type=int, default=3, help="training steps measured after warm-up")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest relative per-step loss difference for the training paths to agree "
                             "(the device check passes the ones measured in benchmarks/device/check.py)")
    parser.add_argument("--paths", default="polo,unsloth_trl,peft_trainer",
                        help="training paths, the first is the reference (a)")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=None, help="results file stem (default: <date>-<host>)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="folder of the results files (default: benchmarks/results)")
    args = parser.parse_args(argv)
    overrides = parse_sets(args.set)
    paths_ = args.paths.split(",")
    if unknown := [p for p in paths_ if p not in TRAINING_PATHS]:
        parser.error(f"unknown training path(s) {unknown}; choose from {', '.join(TRAINING_PATHS)}")
    if args.warmup_steps < 1 or args.steps < 1 or args.repeats < 1:
        parser.error("--warmup-steps, --steps and --repeats must be at least 1")
    from polo_lib.model import import_unsloth

    import_unsloth()
    from polo_lib.atomic import atomic_write_text

    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    stem = args.out or f"{datetime.now(timezone.utc):%Y-%m-%d}-{result['machine']['host']}"
    path = results / f"{stem}.json"
    # the same day and machine: keep the benchmarks not rerun now
    previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def save() -> str:
        """JSON + markdown rewritten after every training path and every benchmark: a run killed
        by a time box (the device check) keeps what it measured before."""
        merged = {**previous, **result}
        atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
        text = markdown(merged)
        atomic_write_text(results / f"{stem}.md", text)
        return text

    def training_so_far(summary: dict) -> None:
        result["training"] = summary
        save()

    if "training" in args.which:
        result["training"] = bench_training(args.params, overrides, args.repeats, args.warmup_steps,
                                            args.steps, args.tolerance, paths_, on_path=training_so_far)
        save()
    if "generation" in args.which:
        result["generation"] = bench_generation(args.params, args.repeats, args.examples,
                                                args.max_new_tokens, args.batch_size, overrides)
        save()
    if "overhead" in args.which:
        result["overhead"] = bench_overhead("smoke", args.repeats)
        save()
    if "whole-job" in args.which:
        result["whole_job"] = bench_whole_job()
        save()
    if "precision" in args.which:
        from benchmarks.precision import bench_precision

        result["precision"] = bench_precision(overrides)
    print(save(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
