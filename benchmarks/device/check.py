"""The parts of the device check, each in its own process with its own time box, against one
overall deadline; results rewritten after every part (benchmarks/device/results.py).

    python -m benchmarks.device.check [--cpu] [--deadline-at EPOCH | --deadline-s 540] [--parts a,b,...]
                                      [--boxes part=seconds,...]

Called by benchmarks/device_check.sh once the environment is checked and the wheels installed
(see its header for the budget). Parts, in order (what a T4 user runs first, then the optional):

  imports          unsloth (GPU stack), bitsandbytes (its CUDA library), trl, datasets, ... import
  models           random-weight models built from the carried shapes (on the GPU)
  training-fp16    python -m benchmarks training at the 3B shape in NF4 4-bit, fp16 (the T4's precision):
                   polo_lib vs bare Unsloth + TRL vs transformers + PEFT + bitsandbytes, batch 1 x 4
  smoke            benchmarks/device/smoke.py: prepare, train 4-bit + 16-bit, evaluate, export, serve
  generation       python -m benchmarks generation: batched vs one at a time, 3B shape
  generation-135m  the same at SmolLM2-135M's shape (16-bit)
  training-bf16    the training comparison in bf16, only with the time left (not in the budget)

A part's time box ends at its BOXES entry or STOP_GRACE_S before the deadline, whichever comes
first, so stopping it can never run past the deadline; with under MIN_SECONDS left it is skipped.
A part whose input failed (no models) is skipped with the reason. Every training path's figures
are in the part's result file the moment that path ends: a part killed at its box keeps them.
--cpu: the same parts on a CPU (no install, tiny Llama shape, float32 only) to check the plumbing.
"""
from __future__ import annotations

import time

# The clock starts here, before anything imports torch or asks nvidia-smi: both count.
STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.device import results as results_lib  # noqa: E402
from benchmarks.device import shapes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The device tool kills the command at 600 s; the default budget (device_check.sh's
# POLO_DEVICE_BUDGET_S, counted from its first line) leaves 60 s of that for the tool's own start
# and for copying $OUT back.
HARD_KILL_S = 600
DEFAULT_BUDGET_S = 540
# stop(): TERM_WAIT_S for SIGTERM, then the rest for SIGKILL. Every box ends this long before the deadline.
TERM_WAIT_S = 10
STOP_GRACE_S = 15
MIN_SECONDS = 20
# A training part with less than this can finish no path at the 3B shape (start, load, 6 steps ~55 s).
MIN_SECONDS_TRAINING = 60
# Seconds each part should take on an H100/H200: estimates (no GPU was lent when they were
# written); device_check.sh's header lists the same. Setup: environment ~5 s + offline install ~50 s.
SETUP_ESTIMATE_S = 55
ESTIMATES = {"imports": 30, "models": 60, "training-fp16": 165, "smoke": 120, "generation": 60,
             "generation-135m": 30, "training-bf16": 165}
# Not counted in the budget: runs only on what the parts before it left.
IF_TIME_LEFT = ("training-bf16",)
# Time boxes (s): the estimate plus room; a fast part leaves its slack to the next one.
BOXES = {"imports": 90, "models": 120, "training-fp16": 200, "smoke": 180, "generation": 90,
         "generation-135m": 60, "training-bf16": 200, "training-fp32": 400}
GPU_PARTS = ["imports", "models", "training-fp16", "smoke", "generation", "generation-135m", "training-bf16"]
CPU_PARTS = ["imports", "models", "training-fp32", "smoke", "generation"]
# Per-step training losses of the three paths must agree within this (relative) for the
# comparison to count; they start from one seeded random init and train on the same batches.
# Measured on this CPU (--cpu: tiny Llama body, float32, batch 1 x 4, 1 + 2 steps): right paths
# differ by at most 1.2e-6; label masking broken on purpose in one path moves its losses by
# 2.1e-5 to 3.0e-5 (labels start one token late), 4.3e-5 (end-of-turn token not trained) and
# 1.5e-3 to 2.6e-3 (prompt trained too). fp32: 5e-6 is 4x from either side. fp16 / bf16: not
# measured (no GPU lent when written), 1e-3 is under the prompt-trained break; the labelled
# tokens per example, compared exactly (precision plays no part there), catch the one-token breaks.
LOSS_TOLERANCE = {"fp32": 5e-6, "fp16": 1e-3, "bf16": 1e-3}
# The Llama shape on a CPU: the real tokenizer and vocabulary (128,256), a tiny body.
TINY_LLAMA_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}
PACKAGES = ["torch", "triton", "transformers", "unsloth", "unsloth_zoo", "bitsandbytes", "trl", "peft",
            "accelerate", "datasets", "pyarrow", "tokenizers", "cut_cross_entropy", "huggingface_hub",
            "safetensors", "pydantic", "fastapi", "numpy", "pandas", "sacrebleu", "xformers", "torchao"]
IMPORTS = """
import json, os, sys, time
t = time.perf_counter()
from polo_lib.model import import_unsloth
import_unsloth()
out = {"import_unsloth_s": round(time.perf_counter() - t, 2)}
import torch
out["cuda"] = torch.cuda.is_available()
if out["cuda"]:
    import bitsandbytes as bnb
    from bitsandbytes.cextension import lib
    out["bnb_library"] = getattr(getattr(lib, "_lib", None), "_name", None)
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    q, state = bnb.functional.quantize_4bit(x, quant_type="nf4")
    out["nf4_roundtrip_max_err"] = float((bnb.functional.dequantize_4bit(q, state) - x).abs().max())
    import unsloth.kernels  # the Triton kernels of the GPU path
import trl, datasets, peft, pyarrow.parquet, fastapi  # noqa
from polo_lib import metrics
# the task metrics' Korean tokens: kiwipiepy is not carried, so on the device sacrebleu 13a tokens
out["korean_tokenizer"] = metrics.korean_tokenizer()
from unsloth import FastLanguageModel  # noqa
print("RESULT " + json.dumps(out))
"""


def versions() -> dict[str, str | None]:
    from polo_lib.runs import package_versions  # no torch import: safe before the GPU checks

    return package_versions(PACKAGES)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "versions": versions()}
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            cap = torch.cuda.get_device_capability()
            info.update(compute_capability=f"{cap[0]}.{cap[1]}", gpu=torch.cuda.get_device_name(0),
                        gpu_memory=f"{torch.cuda.get_device_properties(0).total_memory / 2 ** 30:.1f} GiB")
    except Exception as e:  # noqa: BLE001 - recorded: the parts will say more
        info["torch_error"] = f"{type(e).__name__}: {e}"
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if q.returncode == 0 and q.stdout.strip():
            name, mem, driver = [x.strip() for x in q.stdout.strip().splitlines()[0].split(",")]
            info.update(gpu=name, gpu_memory=mem, driver=driver)
    return info


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the part's whole process group (training paths are its grandchildren), then SIGKILL:
    at most STOP_GRACE_S in all."""
    for sig, wait in ((signal.SIGTERM, TERM_WAIT_S), (signal.SIGKILL, STOP_GRACE_S - TERM_WAIT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(cmd: list[str], timeout: float, log: Path, env: dict[str, str]) -> tuple[str, str | None, float]:
    """(status, error tail, seconds) of `cmd` run in its own process group, killed at `timeout`."""
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            status = results_lib.OK if code == 0 else results_lib.FAILED
        except subprocess.TimeoutExpired:
            stop(proc)
            status, code = results_lib.TIMEOUT, None
        except BaseException:  # the check itself is stopped (SIGTERM, Ctrl-C): take the part with it
            stop(proc)
            raise
    seconds = time.perf_counter() - start
    tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
    if status == results_lib.TIMEOUT:
        return status, f"killed after {timeout:.0f} s (its time box)\n{tail}", seconds
    return status, (None if status == results_lib.OK else f"exit {code}\n{tail}"), seconds


def results_dir() -> str:
    """Where the record goes: $POLO_DEVICE_RESULTS, else $OUT (the device tool brings back only what
    is written there), else benchmarks/results/."""
    return (os.environ.get("POLO_DEVICE_RESULTS") or os.environ.get("OUT")
            or str(ROOT / "benchmarks" / "results"))


def parse_boxes(text: str | None, parts: list[str]) -> dict[str, float]:
    """"smoke=5,training-fp32=40" -> {"smoke": 5.0, "training-fp32": 40.0}; ValueError saying what is wrong."""
    boxes: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in (text or "").split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in parts:
            raise ValueError(f"time box {item!r}: expected PART=SECONDS with PART one of {', '.join(parts)}")
        try:
            boxes[name] = float(value)
        except ValueError:
            raise ValueError(f"time box {item!r}: {value!r} is not a number of seconds") from None
    return boxes


class Check:
    def __init__(self, args):
        self.args = args
        # an absolute deadline (epoch seconds): device_check.sh's start + budget, or main()'s STARTED +
        # --deadline-s; a caller that gives neither (tests) gets deadline_s from now
        self.deadline = getattr(args, "deadline_at", None) or time.time() + args.deadline_s
        self.boxes = {**BOXES, **(getattr(args, "boxes", None) or {})}
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = Path(args.results) / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # the parts' own result files, beside their logs: a training part rewrites its file after every
        # path, so even a check killed outright (the device tool's hard kill) leaves them in $OUT
        self.parts_dir = self.logs / "parts"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if args.cpu:  # the device has no kiwipiepy (84 MiB model, not carried): the rehearsal hides this one
            pythonpath = os.pathsep.join([str(self.hide_kiwipiepy()), pythonpath])
        self.env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "POLO_OUTPUTS": str(self.work / "outputs"),
                    "POLO_PROCESSED_DIR": str(self.work / "processed"),
                    "UNSLOTH_COMPILE_LOCATION": str(self.work / "unsloth_compiled_cache")}
        self.env.setdefault("POLO_MODEL_CACHE", str(self.work / "models"))
        self.models = {"llama": self.work / "random" / shapes.LLAMA, "smollm2": self.work / "random" / shapes.SMOLLM2}

    def hide_kiwipiepy(self) -> Path:
        """A folder that, first on PYTHONPATH, makes `import kiwipiepy` fail as on the device."""
        folder = self.work / "without-kiwipiepy"
        (folder / "kiwipiepy").mkdir(parents=True, exist_ok=True)
        (folder / "kiwipiepy" / "__init__.py").write_text(
            'raise ImportError("kiwipiepy is not carried to the device (hidden by device_check.sh --cpu)")\n')
        return folder

    def remaining(self) -> float:
        return self.deadline - time.time()

    @staticmethod
    def params_keys() -> list[str]:
        from polo_lib import params

        return params.all_keys()

    def python(self, *args: str) -> list[str]:
        return [sys.executable, "-u", *args]  # unbuffered: a killed part's log holds its last line

    def commands(self, part: str) -> list[list[str]]:
        a = self.args
        shape_dir = Path(a.models)
        out = self.parts_dir
        llama = str(self.models["llama"])
        bench = ["-m", "benchmarks"]
        common = ["--params", "default", "--set", f"model.model_name={llama}", "--results-dir", str(out)]
        # The rehearsal keeps to the 16-bit path at float32 on the tiny Llama body: it checks the plumbing
        # within its budget. NF4 on the CPU (bitsandbytes' CPU backend) is tests/test_qlora_cpu.py's.
        if a.cpu:
            common += ["--set", "model.load_in_4bit=false"]
            if "model.require_gpu" in self.params_keys():  # the GPU recipe refuses a CPU unless told
                common += ["--set", "model.require_gpu=false"]
        if part == "imports":
            return [self.python("-c", IMPORTS)]
        if part == "models":
            dtype = "float32" if a.cpu else "bfloat16"
            tiny = ["--shape-overrides", json.dumps(TINY_LLAMA_SHAPE)] if a.cpu else []
            return [self.python("-m", "benchmarks.device.shapes", "--random", str(shape_dir / shapes.SMOLLM2),
                                str(self.models["smollm2"]), "--dtype", dtype),
                    self.python("-m", "benchmarks.device.shapes", "--random", str(shape_dir / shapes.LLAMA),
                                llama, "--dtype", dtype, *tiny)]
        if part == "smoke":
            return [self.python("-m", "benchmarks.device.smoke", str(out / "smoke.json"))]
        if part.startswith("training-"):
            short = part.split("-")[1]
            dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[short]
            steps = ["--warmup-steps", "1", "--steps", "2"] if a.cpu else ["--warmup-steps", "2", "--steps", "4"]
            # no task metrics: they would generate at step 0 and at the last step, outside the measured
            # window but inside the time box (and their Korean tokens need kiwipiepy, not carried)
            return [self.python(*bench, "training", *common, "--set", f"model.dtype={dtype}",
                                "--set", "evaluation.during_training=0", "--repeats", "1", *steps,
                                "--tolerance", str(LOSS_TOLERANCE[short]), "--out", part)]
        if part == "generation-135m":
            return [self.python(*bench, "generation", "--params", "default", "--results-dir", str(out),
                                "--set", f"model.model_name={self.models['smollm2']}", "--set", "model.dtype=bfloat16",
                                "--set", "model.load_in_4bit=false", "--set", "data.processed_name=device-smollm2",
                                "--set", "data.over_length=drop",  # SmolLM2 spends ~2 tokens per Hangul syllable
                                "--repeats", "2", "--examples", "8", "--max-new-tokens", "64", "--batch-size", "8",
                                "--out", part)]
        if part == "generation":
            dtype = "float32" if a.cpu else "bfloat16"
            n = ["--examples", "2", "--max-new-tokens", "8", "--batch-size", "2"] if a.cpu else \
                ["--examples", "8", "--max-new-tokens", "64", "--batch-size", "8"]
            return [self.python(*bench, "generation", *common, "--set", f"model.dtype={dtype}", "--repeats",
                                "1" if a.cpu else "2", *n, "--out", part)]
        raise ValueError(part)

    def result_of(self, part: str) -> Any:
        out = self.parts_dir
        if part == "smoke":
            path = out / "smoke.json"
            return json.loads(path.read_text()) if path.is_file() else None
        if part.startswith(("training-", "generation")):
            path = out / f"{part}.json"
            if not path.is_file():
                return None
            data = json.loads(path.read_text())
            r = data.get("training") or data.get("generation")
            if r and part.startswith("training-"):  # written after every path: a killed part keeps the paths before
                runs = r.pop("all_runs", {})
                r["losses"] = {name: done[0]["losses"] for name, done in runs.items() if done}
                r["dtype"] = part.split("-")[1]
            return r
        if part == "models":
            return [json.loads(line) for line in (self.logs / "models.log").read_text().splitlines()
                    if line.startswith("{")]
        if part == "imports":
            for line in (self.logs / "imports.log").read_text().splitlines():
                if line.startswith("RESULT "):
                    return json.loads(line[7:])
        return None

    def safe_result(self, part: str, error: str | None) -> tuple[Any, str | None]:
        """(result, error) of a part that ended, whatever way: what its files hold so far."""
        try:
            return self.result_of(part), error
        except Exception as e:  # noqa: BLE001 - a half-written part file: keep the status, say why no result
            return None, (error or "") + f"\nresult unreadable: {type(e).__name__}: {e}"

    def run(self, parts: list[str], results: results_lib.Results) -> int:
        failed = 0
        for part in parts:
            left = self.remaining()
            needs_models = part.startswith(("training-", "generation"))
            models = results.data["parts"].get("models")
            if needs_models and models is not None and models["status"] != results_lib.OK:
                results.finish(part, results_lib.SKIPPED, note="no models (the models part did not succeed)")
                continue
            left -= STOP_GRACE_S  # stopping the part must end by the deadline too
            if left < (MIN_SECONDS_TRAINING if part in ("training-fp16", "training-bf16") else MIN_SECONDS):
                results.finish(part, results_lib.SKIPPED,
                               note=f"out of time ({left + STOP_GRACE_S:.0f} s left of the deadline)")
                continue
            box = min(self.boxes[part], left)
            results.start(part)
            print(f"[device-check] {part} (time box {box:.0f} s, {left:.0f} s left) ...", flush=True)
            log = self.logs / f"{part}.log"
            status, error, seconds = results_lib.OK, None, 0.0
            for i, cmd in enumerate(self.commands(part)):
                sub_log = log if i == 0 else log.with_name(f"{part}-{i}.log")
                status, error, s = run_part(cmd, box - seconds, sub_log, self.env)
                seconds += s
                if i:  # append to the part's log
                    with open(log, "a", encoding="utf-8") as f:
                        f.write(sub_log.read_text(encoding="utf-8", errors="replace"))
                    sub_log.unlink()
                if status != results_lib.OK:
                    break
            result, error = self.safe_result(part, error)
            results.finish(part, status, result=result, error=error, box_seconds=round(box))
            print(f"[device-check]   {status} in {seconds:.0f} s", flush=True)
            failed += status != results_lib.OK
        return failed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="no GPU: check the plumbing at a tiny shape")
    parser.add_argument("--deadline-at", type=float, default=None,
                        help="all parts end by this time (epoch seconds; device_check.sh passes its start + budget)")
    parser.add_argument("--deadline-s", type=float, default=DEFAULT_BUDGET_S,
                        help="without --deadline-at: all parts end within this many seconds of this start")
    parser.add_argument("--parts", default=None, help="comma-separated subset, in the usual order")
    parser.add_argument("--boxes", default=None, metavar="PART=S,...",
                        help="time boxes (s) replacing BOXES' for these parts (the CPU rehearsal's short boxes)")
    parser.add_argument("--results", default=results_dir(),
                        help="folder of the record and logs/ (default: $POLO_DEVICE_RESULTS, $OUT, benchmarks/results)")
    parser.add_argument("--stem", default=None, help="results file stem (default: <date>-device-<gpu>)")
    parser.add_argument("--models",
                        default=os.environ.get("POLO_DEVICE_MODELS", str(ROOT / "benchmarks" / "device_models")))
    parser.add_argument("--work", default=os.environ.get("POLO_DEVICE_WORK", "/tmp/polo-device"))
    parser.add_argument("--header", default=None, help="JSON file of fields to record (install, carry)")
    args = parser.parse_args(argv)
    all_parts = CPU_PARTS if args.cpu else GPU_PARTS
    parts = args.parts.split(",") if args.parts else all_parts
    if bad := [p for p in parts if p not in all_parts]:
        parser.error(f"unknown part(s) {bad}; choose from {', '.join(all_parts)}")
    try:
        args.boxes = parse_boxes(args.boxes, all_parts)
    except ValueError as e:
        parser.error(str(e))
    info = machine()
    gpu = (info.get("gpu") or "cpu").split()[-1].lower() if not args.cpu else "cpu"
    stem = args.stem or f"{time.strftime('%Y-%m-%d', time.gmtime())}-device-{gpu}"
    args.deadline_at = deadline = args.deadline_at or STARTED + args.deadline_s
    header = {"machine": info, "mode": "cpu" if args.cpu else "gpu",
              "deadline": {"seconds_from_check_start": round(deadline - STARTED, 1),
                           "stop_grace_s": STOP_GRACE_S, "boxes": {p: args.boxes.get(p, BOXES[p]) for p in parts}},
              "note": "Models are built from their configs with random weights on this machine: throughput "
                      "and memory depend on the architecture, lengths and precision, not on weight values. "
                      "The training paths start from one seeded random init and train on the same batches, so "
                      "their per-step losses must agree (tolerance by precision, in each training result)."}
    if args.header and Path(args.header).is_file():
        header.update(json.loads(Path(args.header).read_text()))
    results = results_lib.Results(Path(args.results), stem, parts, header)
    print(f"[device-check] results: {results.json_path} and {results.md_path}", flush=True)
    # stopped from outside (the machine's time limit): SystemExit unwinds through run_part, which
    # stops the running part, and the record says which part was cut short
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failed = 1
    check = Check(args)
    try:
        failed = check.run(parts, results)
    finally:
        for name, part in results.data["parts"].items():
            if part["status"] == results_lib.RUNNING:  # stopped from outside: keep what the part wrote so far
                result, error = check.safe_result(name, "the check was stopped while this part ran")
                results.finish(name, "interrupted", result=result, error=error)
        results.close()
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
